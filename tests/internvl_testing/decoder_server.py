"""Start an in-process decoder on a free port for a test, with settings overridden per test."""

from __future__ import annotations

import dataclasses

from internvl_testing.servers import ServerThread


def decoder_config(model_dir, encoders: list[str], **overrides):
    from internvl_serve.decoder.config import DecoderConfig

    base = DecoderConfig(
        model=str(model_dir),
        port=0,
        encoders=tuple(encoders),
        num_kv_blocks=256,
        max_num_seqs=16,
        max_tokens_per_step=512,
        drain_notice_s=0.0,  # tests stop servers often; the notice has tests of its own
    )
    return dataclasses.replace(base, **overrides)


def start_decoder(config) -> ServerThread:
    from internvl_serve.decoder.service.server import DecoderServer

    return ServerThread(lambda: DecoderServer(config))


def generation_stub(address: str):
    import grpc

    from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.GenerationServiceStub(channel)


def assert_kv_blocks_free(engine, timeout_s: float = 5.0) -> None:
    """Every KV block is back in the pool (cancelled calls release theirs a moment after they end)."""
    import time

    deadline = time.monotonic() + timeout_s
    while engine.num_free_blocks != engine.num_total_blocks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.num_free_blocks == engine.num_total_blocks, "KV blocks leaked"
