"""Encoder failover on real processes: two encoders behind one decoder, 16 concurrent image-chat clients.
One encoder SIGKILLed under load: nothing fails (gRPC retries on the other replica). With it still dead,
rounds of concurrent requests: nothing fails (the dead replica is out of rotation, so no request's
retries can all land on it). Restarted on its port, then the other one SIGTERMed (draining) under load:
nothing fails and the drained one exits 0 — so the restarted one took the traffic back."""

from __future__ import annotations

import signal

import pytest

from internvl_serve.stack.processes import ServiceProcess
from internvl_testing.decoder_server import decoder_config, start_decoder
from internvl_testing.load import ChatLoad

pytestmark = pytest.mark.slow


def _encoder(tiny_model_dir, redis_url, port=None, log=None) -> ServiceProcess:
    args = ["--model", str(tiny_model_dir), "--redis-url", redis_url, "--num-threads", "1", "--video-workers", "1"]
    args += ["--drain-notice-s", "0.5", "--grace-s", "10"]
    return ServiceProcess("encoder", args, port=port, log_path=log)


def test_no_request_fails_when_an_encoder_is_killed_drained_or_restarted(tiny_model_dir, redis_server, tmp_path):
    a = _encoder(tiny_model_dir, redis_server.url, log=tmp_path / "a.log")
    b = _encoder(tiny_model_dir, redis_server.url, log=tmp_path / "b.log")
    decoder = None
    try:
        a.wait_healthy(120)
        b.wait_healthy(120)
        decoder = start_decoder(decoder_config(tiny_model_dir, [a.address, b.address], max_num_seqs=32))

        load = ChatLoad(decoder.address, clients=16, seed0=1)
        load.wait_sent(24)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        load.wait_sent(72)
        killed = load.finish()
        assert killed.sent >= 72 and killed.failed == 0, killed.failures[:5]

        for round_ in range(3):  # the case: 8 concurrent requests with a replica still dead
            still_dead = ChatLoad(decoder.address, clients=8, requests_each=1, seed0=500_000 + 8 * round_)
            result = still_dead.finish()
            assert result.sent == 8 and result.failed == 0, result.failures[:5]

        a = _encoder(tiny_model_dir, redis_server.url, port=a.port, log=tmp_path / "a2.log")
        a.wait_healthy(120)
        load = ChatLoad(decoder.address, clients=16, seed0=2_000_000)
        load.wait_sent(24)
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(60) == 0
        load.wait_sent(load.result.sent + 32)  # every one of these went to the restarted encoder
        drained = load.finish()
        assert drained.failed == 0, drained.failures[:5]
    finally:
        if decoder is not None:
            decoder.close()
        a.stop()
        b.stop()
