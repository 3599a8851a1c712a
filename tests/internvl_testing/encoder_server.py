"""Start an in-process encoder on a free port for a test, with settings overridden per test."""

from __future__ import annotations

import dataclasses

from internvl_testing.servers import ServerThread


def encoder_config(model_dir, redis_url, **overrides):
    from internvl_serve.common.embedding_cache import CacheSettings
    from internvl_serve.encoder.config import EncoderConfig

    cache = CacheSettings(
        url=redis_url,
        ttl_s=overrides.pop("ttl_s", 3600),
        connect_timeout_s=0.3,
        op_timeout_s=0.3,
        backoff_s=overrides.pop("backoff_s", 0.5),
    )
    base = EncoderConfig(
        model=str(model_dir), port=0, cache=cache, video_workers=1, max_batch_wait_ms=20.0, drain_notice_s=0.0
    )
    return dataclasses.replace(base, **overrides)


def start_encoder(config) -> ServerThread:
    from internvl_serve.encoder.server import EncoderServer

    return ServerThread(lambda: EncoderServer(config))


def encoder_stub(address: str):
    import grpc

    from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)])
    return channel, pb_grpc.VisionEncoderServiceStub(channel)


class EncoderStarter:
    """Starts in-process encoders for a test (`start(redis_url, **overrides)` -> (server thread, stub,
    channel)) and stops every one of them in close()."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self._made = []

    def start(self, redis_url, **overrides):
        thread = start_encoder(encoder_config(self.model_dir, redis_url, **overrides))
        channel, stub = encoder_stub(thread.address)
        self._made.append((thread, channel))
        return thread, stub, channel

    def close(self) -> None:
        for thread, channel in self._made:
            channel.close()
            thread.close()
