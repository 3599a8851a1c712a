"""Tensor parallelism on the CPU (gloo): a decoder process with --tensor-parallel-size 2 (and 4, where the
tiny model's 2 KV heads are replicated) gives transformers' greedy tokens on the model card's chats; a
head count the size does not divide is refused at start with the numbers; a rank that dies makes the
decoder fail in-flight calls, report NOT_SERVING and exit non-zero, never hang."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from internvl_serve.stack.processes import ServiceProcess
from internvl_testing.decoder_server import generation_stub
from internvl_testing.encoder_server import encoder_config, start_encoder
from internvl_testing.generate_requests import generate_request, stream_request

MAX_NEW = 12
CARD = ["text only", "one image", "several images", "video"]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    server = start_encoder(encoder_config(tiny_model_dir, None))
    yield server
    server.close()


@pytest.fixture(scope="module")
def expected(oracle, model_card_chats):
    return {name: oracle.generate(model_card_chats[name], max_new_tokens=MAX_NEW)[0] for name in CARD}


def start_tp_decoder(tiny_model_dir, encoder, size: int, log_path) -> ServiceProcess:
    args = ["--model", str(tiny_model_dir), "--encoder", encoder.address, "--tensor-parallel-size", str(size)]
    args += ["--num-kv-blocks", "128", "--max-num-seqs", "8", "--drain-notice-s", "0"]
    decoder = ServiceProcess("decoder", args, log_path=log_path)
    try:
        decoder.wait_healthy(300)
    except BaseException:
        decoder.stop()
        raise
    return decoder


def log_events(path) -> list[dict]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


@pytest.mark.parametrize("size", [2, 4])
def test_greedy_tokens_equal_transformers(size, tiny_model_dir, encoder, model_card_chats, expected, tmp_path):
    names = CARD if size == 2 else ["text only", "one image"]  # 4 ranks on 2 cores: keep it short
    decoder = start_tp_decoder(tiny_model_dir, encoder, size, tmp_path / "decoder.log")
    channel, stub = generation_stub(decoder.address)
    try:
        for name in names:
            reply = stub.Generate(generate_request(model_card_chats[name], max_new_tokens=MAX_NEW), timeout=120)
            assert list(reply.token_ids) == expected[name], name
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:  # the card's mixed batch, at once
            replies = pool.map(
                lambda n: stub.Generate(generate_request(model_card_chats[n], max_new_tokens=MAX_NEW), timeout=120),
                names,
            )
            assert [list(r.token_ids) for r in replies] == [expected[n] for n in names]
    finally:
        channel.close()
        assert decoder.stop() == 0
    loaded = [e for e in log_events(tmp_path / "decoder.log") if e.get("event") == "decoder.model_loaded"]
    assert loaded and all(e.get("tensor_parallel_size") == size for e in loaded)
    assert (
        len([e for e in log_events(tmp_path / "decoder.log") if e.get("event") == "decoder.tp_worker_started"])
        == size - 1
    )


def test_a_size_that_does_not_divide_the_heads_is_refused_at_start(tiny_model_dir):
    argv = [sys.executable, "-m", "internvl_serve.cli", "decoder", "--model", str(tiny_model_dir)]
    result = subprocess.run(
        [*argv, "--tensor-parallel-size", "3", "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "num_attention_heads 4 is not divisible by --tensor-parallel-size 3" in result.stderr
    assert "intermediate_size" not in result.stderr or "128" in result.stderr


def test_a_rank_that_dies_fails_the_calls_and_the_decoder_exits_non_zero(
    tiny_model_dir, encoder, model_card_chats, tmp_path
):
    log_path = tmp_path / "decoder.log"
    decoder = start_tp_decoder(tiny_model_dir, encoder, 2, log_path)
    channel, stub = generation_stub(decoder.address)
    try:
        worker = next(e for e in log_events(log_path) if e.get("event") == "decoder.tp_worker_started")["pid"]
        request = stream_request(model_card_chats["text only"], max_new_tokens=2000, ignore_eos=True)
        stream = stub.GenerateStream(request, timeout=120)
        next(stream)  # generating
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        started = time.monotonic()
        code = decoder.proc.wait(timeout=60)  # never hangs
        assert code != 0 and time.monotonic() - started < 60
    finally:
        channel.close()
        decoder.stop()
    failed = [e for e in log_events(log_path) if e.get("event") == "decoder_failed"]
    assert failed and "tensor-parallel rank 1 exited" in failed[0]["reason"]
