"""The decoder's client of VisionEncoderService: one gRPC channel over every encoder replica, with gRPC's
round_robin, client-side health checking and retry policy doing the failover (a replica that is down,
loading or draining leaves the rotation; a retry goes to a replica that is up). The caller's deadline
bounds the whole call, waits and retries included; the encoder's own errors pass through with their
codes. Each call is a CLIENT span whose context travels in the call's metadata, so the encoder's spans
join the request's trace.
"""

from __future__ import annotations

import asyncio
import json
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
from internvl_serve.common.service_settings import REQUEST_OVERHEAD_BYTES
from internvl_serve.common.tenancy import DEFAULT_TENANT, TENANT_METADATA
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.service.encoder_target import encoder_target
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc

log = logging.getLogger("internvl_serve.decoder.service.encoder_client")
ENCODER_SERVICE = pb.DESCRIPTOR.services_by_name["VisionEncoderService"].full_name
ENCODE = f"{ENCODER_SERVICE}/Encode"
MAX_GRPC_ATTEMPTS = 5  # gRPC caps a retry policy's maxAttempts at 5

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


def service_config(attempts: int, backoff_s: float) -> str:
    """round_robin over every address of the target, skipping replicas whose grpc.health.v1 says
    NOT_SERVING (loading or draining), and gRPC's own retry of UNAVAILABLE with exponential backoff.
    `waitForReady`: while no encoder is up, a call waits (within its deadline) instead of failing."""
    method: dict[str, object] = {"name": [{"service": ENCODER_SERVICE}], "waitForReady": True}
    if attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": min(attempts, MAX_GRPC_ATTEMPTS),
            "initialBackoff": f"{max(backoff_s, 0.001):.3f}s",
            "maxBackoff": f"{max(backoff_s * 8, 0.001):.3f}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": ENCODER_SERVICE},
            "methodConfig": [method],
        }
    )


def channel_options(
    max_message_bytes: int, attempts: int, backoff_s: float, max_request_bytes: int
) -> list[tuple[str, int | str]]:
    return [
        # Embeddings of one request can be tens of MB (InternVL3-14B: ~2.5 MiB per tile in bf16).
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_request_bytes),
        ("grpc.service_config", service_config(attempts, backoff_s)),
        ("grpc.enable_retries", 1),
        # A request is kept for a retry only up to this size (default 256 KiB); media requests are larger.
        ("grpc.per_rpc_retry_buffer_size", max_request_bytes),
        # Find a dead encoder between requests, not in the middle of one.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect quickly after an encoder restarts, so traffic returns to it.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


class EncoderClient:
    """One channel over all encoder replicas; failover, health and retries are gRPC's own."""

    def __init__(
        self,
        addresses: list[str],
        *,
        attempts: int = field_default(DecoderConfig, "encoder_attempts"),
        backoff_s: float = field_default(DecoderConfig, "encoder_backoff_s"),
        timeout_s: float = field_default(DecoderConfig, "encoder_timeout_s"),
        max_concurrency: int = field_default(DecoderConfig, "encoder_max_concurrency"),
        max_message_bytes: int = field_default(DecoderConfig, "max_encoder_reply_bytes"),
        max_request_bytes: int = field_default(DecoderConfig, "max_request_media_bytes") + REQUEST_OVERHEAD_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        tracer=None,
    ):
        """`attempts`, `backoff_s`, `timeout_s`, `max_message_bytes`: the decoder's --encoder-attempts,
        --encoder-backoff-s, --encoder-timeout-s and --max-encoder-reply-mb. `max_request_bytes`: the
        largest Encode request (the decoder's own request limit). `credentials`: TLS to the encoders, whose
        certificates must name the --encoder host or `tls_server_name`; `token`: sent as `authorization:
        Bearer` (--encoder-token). `max_concurrency`: Encode calls in flight at once. `tracer`: CLIENT spans."""
        self.addresses = list(addresses)
        self.target = encoder_target(self.addresses)
        self.timeout_s = timeout_s
        options = channel_options(max_message_bytes, attempts, backoff_s, max_request_bytes)
        if credentials is not None and tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        elif credentials is not None and self.target.startswith(("ipv4:", "ipv6:")) and len(self.addresses) > 1:
            raise ValueError(
                "TLS to an encoder address list needs --encoder-tls-server-name (the name their certificates "
                "carry), or give one DNS name (dns:///encoders:50051) that the certificates name"
            )
        self._slots = asyncio.Semaphore(max_concurrency)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        self._stub = pb_grpc.VisionEncoderServiceStub(self._channel)
        self._auth = () if not token else (("authorization", f"Bearer {token}"),)
        # The encoders' vision-model fingerprint (part of every cache key), learned from their answers.
        self.model_fingerprint = ""
        self._tracer = tracer if tracer is not None else trace.get_tracer("internvl_serve.decoder")

    async def close(self) -> None:
        await self._channel.close()

    async def encode(
        self, media: list[media_pb2.Media], deadline: float | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[EncodedResult]:
        """Embeddings for `media`, in order. `deadline` is a time.monotonic() instant (the client's);
        `tenant`: whose media this is (the encoder keys its cache by it)."""
        async with self._slots:
            return await self._encode(media, deadline, tenant)

    async def _encode(self, media: list[media_pb2.Media], deadline: float | None, tenant: str) -> list[EncodedResult]:
        request = pb.EncodeRequest(media=media, return_embeddings=True)
        bound = self.timeout_s  # without the client's deadline; with it, the client's deadline alone
        if deadline is not None:
            bound = deadline - time.monotonic()
            if bound <= 0:
                raise DeadlineExceeded("the deadline passed while waiting for the vision encoder")
        span = outbound_span(
            self._tracer, ENCODE, self.target, {"internvl.media.count": len(media), "internvl.tenant": tenant}
        )
        metadata = (*(span.metadata or ()), *self._auth, (TENANT_METADATA, tenant))
        try:
            reply = await self._stub.Encode(request, timeout=bound, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            span.finish(exc.code(), exc)
            raise self._error(exc, own_bound=deadline is None) from None
        except BaseException:  # cancelled by the caller
            span.finish(None)
            raise
        span.set_attributes({"internvl.media.cache_hits": sum(m.cache_hit for m in reply.media)})
        span.finish(grpc.StatusCode.OK)
        self.model_fingerprint = reply.model_fingerprint or self.model_fingerprint
        return [_result(m) for m in reply.media]

    def _error(self, exc: grpc.aio.AioRpcError, own_bound: bool) -> ServiceError:
        code = exc.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and own_bound:
            return Unavailable(f"no vision encoder answered within --encoder-timeout-s={self.timeout_s:g}; retry later")
        error = _pass_through(exc)
        if error is not None:
            return error
        log_event(log, "encoder_unavailable", logging.WARNING, target=self.target, code=code.name)
        if code is grpc.StatusCode.UNAUTHENTICATED or code is grpc.StatusCode.PERMISSION_DENIED:
            # Our own credentials were refused: an operator's problem, not the client's.
            return Unavailable("the vision encoders refused this decoder's --encoder-token; retry later")
        return Unavailable(f"no vision encoder answered ({self.target}: {code.name}); retry later")


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
