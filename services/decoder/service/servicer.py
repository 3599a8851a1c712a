"""internvl.v1.GenerationService: protos in, engine deltas out; media encoded by the vision encoders.
Each call is traced as a "chat {model}" span (chat_telemetry.ChatTrace) under the RPC's server span."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from opentelemetry import trace

from internvl_serve.common.errors import ServiceError, Unavailable
from internvl_serve.common.tenancy import DEFAULT_TENANT, current_tenant
from internvl_serve.decoder.engine import (
    Engine,
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    MediaEmbedding,
    Usage,
)
from internvl_serve.decoder.service.chat_telemetry import ChatTrace, DecoderMetrics
from internvl_serve.decoder.service.encoder_client import EncoderClient
from internvl_serve.decoder.service.media_ids import MediaIdLookup
from internvl_serve.decoder.service.proto_convert import (
    chat_from_proto,
    check_media_bytes,
    check_request_id,
    fix_media_types,
    logprobs_to_proto,
    sampling_from_proto,
)
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
_FINISH = {FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.LENGTH: pb.FINISH_REASON_LENGTH}


def _usage(u: Usage) -> pb.Usage:
    return pb.Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        image_tokens=u.image_tokens,
        media_cache_hits=u.media_cache_hits,
        cached_tokens=u.cached_tokens,
    )


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    """Registered before the server starts; `engine` is set once the model is loaded and warm."""

    def __init__(
        self,
        encoders: EncoderClient | None,
        draining: asyncio.Event,
        *,
        tracer: trace.Tracer | None = None,
        metrics: DecoderMetrics | None = None,
        capture_content: bool = False,
        media_ids: MediaIdLookup | None = None,
    ):
        self.engine: Engine | None = None
        self.model_name = ""
        self.encoders = encoders
        self.media_ids = media_ids  # media_id parts read straight from the cache (--redis-url)
        self.draining = draining
        self.tracer = tracer or trace.NoOpTracer()
        self.metrics = metrics
        self.capture_content = capture_content  # prompt/completion text on spans (opt-in)
        self.in_flight = 0  # Generate/GenerateStream calls not yet finished (encoding media included)

    def _trace(self, stream: bool) -> ChatTrace:
        return ChatTrace(
            self.tracer, self.metrics, self.model_name, stream=stream, capture_content=self.capture_content
        )

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        chat_trace = self._trace(stream=False)
        self.in_flight += 1
        try:
            with chat_trace.start() as span:
                try:
                    request_id, deltas = await self._start(request, context, chat_trace, span)
                    text, ids, logprobs, last = [], [], [], None
                    async with contextlib.aclosing(deltas):
                        async for delta in deltas:
                            chat_trace.delta(delta)
                            text.append(delta.text)
                            ids += delta.token_ids
                            logprobs += logprobs_to_proto(delta.logprobs)
                            last = delta
                except BaseException as exc:
                    chat_trace.end(exc)
                    raise
                chat_trace.end()
        finally:
            self.in_flight -= 1
        return pb.GenerateResponse(
            text="".join(text),
            token_ids=ids,
            finish_reason=_FINISH[last.finish_reason],
            usage=_usage(last.usage),
            request_id=request_id,
            model=self.model_name,
            logprobs=logprobs,
        )

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        chat_trace = self._trace(stream=True)
        self.in_flight += 1
        try:
            with chat_trace.start() as span:
                try:
                    request_id, deltas = await self._start(request, context, chat_trace, span)
                    async with contextlib.aclosing(deltas):
                        async for delta in deltas:
                            chat_trace.delta(delta)
                            msg = pb.GenerateStreamResponse(
                                text=delta.text,
                                token_ids=delta.token_ids,
                                request_id=request_id,
                                model=self.model_name,
                                logprobs=logprobs_to_proto(delta.logprobs),
                            )
                            if delta.finished:
                                msg.finish_reason = _FINISH[delta.finish_reason]
                                msg.usage.CopyFrom(_usage(delta.usage))
                                chat_trace.end()  # before the last message goes out: the client may close at once
                            yield msg
                except BaseException as exc:
                    chat_trace.end(exc)
                    raise
        finally:
            self.in_flight -= 1

    async def _start(self, request, context, chat_trace: ChatTrace, span) -> tuple[str, AsyncIterator[GenerationDelta]]:
        if self.draining.is_set():
            raise Unavailable("this decoder is shutting down; retry (another replica will answer)")
        engine = self.engine
        if engine is None:
            raise Unavailable("the decoder is still loading its model; retry shortly")
        request_id = check_request_id(request.request_id) or uuid.uuid4().hex
        chat, media = chat_from_proto(request.messages)
        check_media_bytes(media, engine.config.max_request_media_bytes)
        tenant = current_tenant()
        span.set_attribute("internvl.tenant", tenant)
        sampling = sampling_from_proto(request.sampling)
        chat_trace.request(span, request_id, sampling, engine.config.default_max_new_tokens, chat, len(media))
        await engine.validate(chat, sampling)  # before any media is encoded
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        embeddings = await self._encode(media, deadline, tenant)
        fix_media_types(chat, [m.media_type == "video" for m in embeddings])
        # Tenants never share cached KV (a hit would show in cached_tokens) unless the cache is shared.
        shared = tenant == DEFAULT_TENANT or engine.config.cache.share_across_tenants
        salt = b"" if shared else tenant.encode()
        deltas = engine.generate(GenerationRequest(chat, embeddings, sampling, request_id, deadline, salt))
        return request_id, deltas

    async def _encode_item(self, index: int, item, deadline: float | None, tenant: str):
        """One media part; the encoder's verdict names it by its place among the request's media."""
        try:
            return (await self.encoders.encode([item], deadline, tenant))[0]
        except ServiceError as exc:
            message = str(exc)
            if message.startswith("media[0]"):
                raise type(exc)(f"media[{index}]{message[len('media[0]') :]}") from None
            raise

    async def _encode(self, media, deadline: float | None, tenant: str) -> list[MediaEmbedding]:
        if not media:
            return []
        if self.encoders is None:
            raise Unavailable("this decoder has no vision encoder (--encoder HOST:PORT); it can answer text only")
        results = [None] * len(media)
        if self.media_ids is not None:  # media_ids straight from the cache where possible
            results = await self.media_ids.resolve(media, self.encoders.model_fingerprint, tenant)
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            # One Encode call per item, all at once: items spread over the encoder replicas (round robin)
            # and one encoder micro-batches them together; the first error cancels the rest.
            try:
                async with asyncio.TaskGroup() as group:
                    calls = {i: group.create_task(self._encode_item(i, media[i], deadline, tenant)) for i in todo}
            except ExceptionGroup as errors:  # the first item's error is the request's answer
                raise errors.exceptions[0] from None
            for i, call in calls.items():
                results[i] = call.result()
        # The encoders' media id (preprocessing + content hash) with their model fingerprint names what the
        # embeddings are computed from: the prefix cache keys image positions by it.
        fingerprint = self.encoders.model_fingerprint
        out = []
        for r in results:
            content = f"{fingerprint}/{r.media_id}".encode() if r.media_id else b""
            kind = "video" if r.is_video else "image"
            frames = r.num_frames if r.is_video else 0
            out.append(
                MediaEmbedding(
                    r.embeddings,
                    kind,
                    r.num_tiles,
                    r.tokens_per_tile,
                    num_frames=frames,
                    cache_hit=r.cache_hit,
                    content_hash=content,
                )
            )
        return out
