"""The decoder's client of VisionEncoderService: round-robin over encoder replicas, retry on UNAVAILABLE,
the caller's deadline propagated, and the encoder's own errors passed through with their codes. Each
attempt is a CLIENT span whose context travels in the call's metadata, so the encoder's spans join the
request's trace.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from opentelemetry import trace

from internvl_serve.common.config_fields import field_default
from internvl_serve.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from internvl_serve.common.logs import log_event
from internvl_serve.common.outbound_span import outbound_span
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc

log = logging.getLogger("internvl_serve.decoder.service.encoder_client")
ENCODE = "internvl.v1.VisionEncoderService/Encode"

_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
_NUMPY_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}


@dataclass(frozen=True)
class EncodedResult:
    media_id: str
    embeddings: torch.Tensor  # [num_tokens, hidden]
    num_tiles: int
    num_frames: int
    tokens_per_tile: int
    is_video: bool
    cache_hit: bool


def tensor_from_proto(t: media_pb2.Tensor) -> torch.Tensor:
    if t.dtype not in _NUMPY_DTYPES:
        raise Unavailable(f"encoder sent embeddings of unknown dtype {t.dtype!r}")
    array = np.frombuffer(t.data, dtype=_NUMPY_DTYPES[t.dtype]).reshape(tuple(t.shape))
    tensor = torch.from_numpy(array.copy())
    return tensor.view(torch.bfloat16) if t.dtype == "bfloat16" else tensor


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        # Embeddings of one request can be tens of MB (InternVL3-14B: ~2.5 MiB per tile in bf16).
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Spread calls over every address a name resolves to (compose replicas share one DNS name);
        # gRPC's default pick_first would send everything to the first replica.
        ("grpc.lb_policy_name", "round_robin"),
        # Find a dead encoder between requests, not in the middle of one.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect quickly after an encoder restarts.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


class EncoderClient:
    def __init__(
        self,
        addresses: list[str],
        *,
        attempts: int = field_default(DecoderConfig, "encoder_attempts"),
        backoff_s: float = field_default(DecoderConfig, "encoder_backoff_s"),
        max_message_bytes: int = field_default(DecoderConfig, "max_encoder_reply_bytes"),
        tracer=None,
    ):
        """`attempts`, `backoff_s`, `max_message_bytes`: the decoder's --encoder-attempts, --encoder-backoff-s
        and --max-encoder-reply-mb (DecoderConfig's defaults). `tracer`: for the CLIENT spans (default: the
        global tracer provider's)."""
        if not addresses:
            raise ValueError("at least one encoder address (HOST:PORT) is needed")
        self.addresses = addresses
        self.attempts = max(attempts, len(addresses))
        self.backoff_s = backoff_s
        self._channels = [grpc.aio.insecure_channel(a, options=channel_options(max_message_bytes)) for a in addresses]
        self._stubs = [pb_grpc.VisionEncoderServiceStub(c) for c in self._channels]
        self._next = itertools.cycle(range(len(addresses)))
        # The encoders' vision-model fingerprint (part of every cache key), learned from their answers.
        self.model_fingerprint = ""
        self._tracer = tracer if tracer is not None else trace.get_tracer("internvl_serve.decoder")

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels), return_exceptions=True)

    async def encode(self, media: list[media_pb2.Media], deadline: float | None = None) -> list[EncodedResult]:
        """Embeddings for `media`, in order. `deadline` is a time.monotonic() instant (the client's)."""
        request = pb.EncodeRequest(media=media, return_embeddings=True)
        last: grpc.RpcError | None = None
        for attempt in range(self.attempts):
            index = next(self._next)
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded("the deadline passed while waiting for the vision encoder")
            span = outbound_span(
                self._tracer,
                ENCODE,
                self.addresses[index],
                {"internvl.media.count": len(media), "internvl.rpc.attempt": attempt + 1},
            )
            try:
                reply = await self._stubs[index].Encode(request, timeout=timeout, metadata=span.metadata)
            except grpc.aio.AioRpcError as exc:
                span.finish(exc.code(), exc)
                error = _pass_through(exc)
                if error is not None:
                    raise error from None
                last = exc
                log_event(
                    log,
                    "encoder_unavailable",
                    logging.WARNING,
                    address=self.addresses[index],
                    attempt=attempt + 1,
                    code=exc.code().name,
                )
                await asyncio.sleep(self.backoff_s * (2**attempt))
                continue
            except BaseException:  # cancelled by the caller
                span.finish(None)
                raise
            span.set_attributes({"internvl.media.cache_hits": sum(m.cache_hit for m in reply.media)})
            span.finish(grpc.StatusCode.OK)
            self.model_fingerprint = reply.model_fingerprint or self.model_fingerprint
            return [_result(m) for m in reply.media]
        raise Unavailable(
            f"no vision encoder answered ({', '.join(self.addresses)}; {self.attempts} attempts, last: "
            f"{last.code().name if last else 'none'}); retry later"
        )


def _pass_through(exc: grpc.aio.AioRpcError) -> ServiceError | None:
    """The encoder's verdict on the client's media, kept as is; None for errors worth another replica."""
    kind = _PASS_THROUGH.get(exc.code())
    return None if kind is None else kind(exc.details() or exc.code().name)


def _result(m: pb.EncodedMedia) -> EncodedResult:
    return EncodedResult(
        media_id=m.media_id,
        embeddings=tensor_from_proto(m.embeddings),
        num_tiles=m.num_tiles,
        num_frames=m.num_frames,
        tokens_per_tile=m.tokens_per_tile,
        is_video=m.media_type == media_pb2.MEDIA_TYPE_VIDEO,
        cache_hit=m.cache_hit,
    )
