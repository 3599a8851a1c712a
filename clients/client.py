"""InternVLClient (blocking) and AsyncInternVLClient (asyncio): chat messages in, text out.

    client = InternVLClient("localhost:50051")
    result = client.generate([{"role": "user", "content": [{"type": "image", "path": "cat.jpg"},
                                                            {"type": "text", "text": "Describe it."}]}],
                             max_new_tokens=64)
    for delta in client.stream(messages):  print(delta.text, end="", flush=True)
    answers = client.generate([conversation1, conversation2])   # a batch: run concurrently, in order
    ids = client.encode(["cat.jpg"])                               # pre-warm; reuse as {"media_id": ids[0]}

`timeout` (seconds) bounds a whole call, media preparation included, and is sent as the gRPC deadline.
Each call is an OpenTelemetry CLIENT span (when opentelemetry is installed; `tracer_provider`, default the
global one) whose context goes to the server in the call's metadata, so the server's spans join the trace.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from internvl_serve.clients.channel import ChannelSettings, aio_channel, sync_channel, tls_credentials
from internvl_serve.clients.errors import DeadlineExceededError, InputError, from_rpc_error
from internvl_serve.clients.fetch import UrlPolicy
from internvl_serve.clients.messages import encode_request, generate_request, is_batch
from internvl_serve.clients.results import EncodedMedia, GenerateResult, StreamDelta
from internvl_serve.clients.sampling import sampling_params
from internvl_serve.clients.tracing import (
    ENCODE,
    GENERATE,
    GENERATE_STREAM,
    ClientSpan,
    client_span,
    current_context,
    generation_attributes,
    get_tracer,
    request_attributes,
)
from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as gen_grpc
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as enc_grpc


class _ClientBase:
    def __init__(
        self,
        target: str,
        *,
        encoder_target: str | None = None,
        timeout: float | None = 300.0,
        allow_urls: bool = False,
        url_max_bytes: int = 64 * 1024 * 1024,
        url_timeout: float = 30.0,
        num_frames: int = 0,
        max_concurrency: int = 64,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token: str | None = None,
        channel_settings: ChannelSettings | None = None,
        tracer_provider: Any = None,
    ):
        """`target` is the decoder's HOST:PORT; `encoder_target` the encoder's for encode() (default:
        `target`). `timeout` is the default per-call deadline in seconds (None: no deadline). Urls in
        messages are fetched by the client only with `allow_urls=True`, up to `url_max_bytes` and
        `url_timeout` seconds each. `num_frames` is the default for video parts (0: the server's).
        TLS: `tls_ca` (PEM file verifying the server), `tls_cert`/`tls_key` (this client's certificate, for
        mutual TLS), or ready-made `credentials`. `token`: sent as `authorization: Bearer TOKEN` (default:
        the INTERNVL_TOKEN environment variable). Several decoders: a target gRPC balances over, e.g.
        "dns:///decoders:50052" or "ipv4:10.0.0.1:50052,10.0.0.2:50052"."""
        self.target = target
        self.encoder_target = encoder_target or target
        self.timeout = timeout
        self.url_policy = UrlPolicy(allow=allow_urls, max_bytes=url_max_bytes, timeout_s=url_timeout)
        self.num_frames = num_frames
        self.max_concurrency = max(1, max_concurrency)
        self._credentials = credentials or tls_credentials(tls_ca, tls_cert, tls_key)
        token = token if token is not None else os.environ.get("INTERNVL_TOKEN")
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
        if token and self._credentials is None and not _is_loopback(target):
            warnings.warn(
                f"sending a token to {target} without TLS: anyone on the path can read it (pass tls_ca=)",
                stacklevel=3,
            )
        self._settings = channel_settings or ChannelSettings()
        self._tracer = get_tracer(tracer_provider)

    def _metadata(self, span: ClientSpan) -> tuple[tuple[str, str], ...]:
        """A call's metadata: its trace context and the token."""
        return (*(span.metadata or ()), *self._auth)

    def _span(self, method: str, target: str, params: Any = None, parent: Any = None) -> ClientSpan:
        attributes = None if params is None else request_attributes(params, stream=method == GENERATE_STREAM)
        return client_span(self._tracer, method, target, attributes, parent)

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError("the call's timeout passed before the request was sent")
        return remaining

    def _request(self, conversation: Any, sampling: Any, request_id: str | None, stream: bool):
        return generate_request(
            conversation, sampling, self.url_policy, request_id=request_id, num_frames=self.num_frames, stream=stream
        )

    def _encode_request(self, media: Any, num_frames: int | None, return_embeddings: bool):
        frames = self.num_frames if num_frames is None else num_frames
        request = encode_request(media, self.url_policy, num_frames=frames)
        request.return_embeddings = return_embeddings
        return request


def _is_loopback(target: str) -> bool:
    host = target.split("://", 1)[-1].rpartition(":")[0].strip("[]") or target
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _batch_ids(request_id: str | None, n: int) -> list[str | None]:
    return [None if request_id is None else f"{request_id}-{i}" for i in range(n)]


def _one_conversation(messages: Any, what: str) -> Any:
    if is_batch(messages):
        raise InputError(f"{what} takes one conversation; call it once per conversation of a batch")
    return messages


class InternVLClient(_ClientBase):
    """Blocking client. Thread-safe; a batch runs on a thread pool of at most `max_concurrency` threads."""

    def __init__(self, target: str, **kwargs: Any):
        super().__init__(target, **kwargs)
        self._channel = sync_channel(self.target, self._settings, self._credentials)
        self._generation = gen_grpc.GenerationServiceStub(self._channel)
        self._enc_channel = self._channel
        if self.encoder_target != self.target:
            self._enc_channel = sync_channel(self.encoder_target, self._settings, self._credentials)
        self._encoder = enc_grpc.VisionEncoderServiceStub(self._enc_channel)

    def close(self) -> None:
        self._channel.close()
        if self._enc_channel is not self._channel:
            self._enc_channel.close()

    def __enter__(self) -> InternVLClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def generate(
        self,
        messages: Any,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        return_exceptions: bool = False,
        **sampling: Any,
    ) -> GenerateResult | list[Any]:
        """The reply to one conversation, or a list of replies (in order) to a list of conversations.
        With `return_exceptions=True` a failed conversation of a batch gives its exception in its place."""
        params = sampling_params(**sampling)
        deadline = self._deadline(timeout)
        if not is_batch(messages):
            return self._generate_one(messages, params, request_id, deadline)
        ids = _batch_ids(request_id, len(messages))
        parent = current_context()  # pool threads do not inherit the caller's trace context
        pool = ThreadPoolExecutor(max_workers=min(len(messages), self.max_concurrency))
        futures = [pool.submit(self._generate_one, c, params, i, deadline, parent) for c, i in zip(messages, ids)]
        try:
            if return_exceptions:
                return [f.exception() or f.result() for f in futures]
            return [f.result() for f in futures]
        finally:
            # After a failure, conversations not started yet are dropped; calls in flight end on their own.
            pool.shutdown(wait=False, cancel_futures=True)

    def _generate_one(
        self, conversation: Any, params: Any, request_id: str | None, deadline: float | None, parent: Any = None
    ):
        request = self._request(conversation, params, request_id, stream=False)
        timeout = self._remaining(deadline)
        try:
            with self._span(GENERATE, self.target, params, parent) as span:
                reply = self._generation.Generate(request, timeout=timeout, metadata=self._metadata(span))
                span.set_attributes(generation_attributes(reply, stream=False))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return GenerateResult.from_proto(reply)

    def stream(
        self, messages: Any, *, timeout: float | None = None, request_id: str | None = None, **sampling: Any
    ) -> Iterator[StreamDelta]:
        """The reply to one conversation as it is produced. Arguments and media are checked now; the call
        starts on the first next(). Leaving the loop early cancels the call on the server."""
        params = sampling_params(**sampling)
        deadline = self._deadline(timeout)
        request = self._request(_one_conversation(messages, "stream()"), params, request_id, stream=True)
        return self._stream(request, deadline, params, current_context())

    def _stream(self, request: Any, deadline: float | None, params: Any, parent: Any) -> Iterator[StreamDelta]:
        call = None
        timeout = self._remaining(deadline)
        try:
            with self._span(GENERATE_STREAM, self.target, params, parent) as span:
                call = self._generation.GenerateStream(request, timeout=timeout, metadata=self._metadata(span))
                for response in call:
                    if response.finish_reason:
                        span.set_attributes(generation_attributes(response, stream=True))
                    yield StreamDelta.from_proto(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            if call is not None:
                call.cancel()  # a no-op once the stream ended; stops the server's work when we leave early

    def encode(
        self,
        media: Any,
        *,
        num_frames: int | None = None,
        timeout: float | None = None,
        return_embeddings: bool = False,
    ) -> list[EncodedMedia]:
        """Encode one media item or a list (on `encoder_target`) and return one EncodedMedia per item, in
        order; its `media_id` can replace the bytes in later calls (see messages.encode_request)."""
        deadline = self._deadline(timeout)
        request = self._encode_request(media, num_frames, return_embeddings)
        remaining = self._remaining(deadline)
        try:
            with self._span(ENCODE, self.encoder_target) as span:
                reply = self._encoder.Encode(request, timeout=remaining, metadata=self._metadata(span))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return [EncodedMedia.from_proto(e, reply.model) for e in reply.media]


class AsyncInternVLClient(_ClientBase):
    """asyncio client (grpc.aio). Channels are opened on first use, in the running event loop; media are
    prepared in worker threads so the loop is never blocked. Same arguments as InternVLClient."""

    _channel: grpc.aio.Channel | None = None
    _enc_channel: grpc.aio.Channel | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def _stubs(self) -> tuple[gen_grpc.GenerationServiceStub, enc_grpc.VisionEncoderServiceStub]:
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:  # grpc.aio channels belong to one event loop
            self._loop = loop
            self._channel = aio_channel(self.target, self._settings, self._credentials)
            self._enc_channel = self._channel
            if self.encoder_target != self.target:
                self._enc_channel = aio_channel(self.encoder_target, self._settings, self._credentials)
        return gen_grpc.GenerationServiceStub(self._channel), enc_grpc.VisionEncoderServiceStub(self._enc_channel)

    async def close(self) -> None:
        channels = {id(c): c for c in (self._channel, self._enc_channel) if c is not None}
        self._channel = self._enc_channel = None
        await asyncio.gather(*(c.close() for c in channels.values()))

    async def __aenter__(self) -> AsyncInternVLClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def generate(
        self,
        messages: Any,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        return_exceptions: bool = False,
        **sampling: Any,
    ) -> GenerateResult | list[Any]:
        """As InternVLClient.generate; a batch runs concurrently (at most `max_concurrency` at once)."""
        params = sampling_params(**sampling)
        deadline = self._deadline(timeout)
        if not is_batch(messages):
            return await self._generate_one(messages, params, request_id, deadline)
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(conversation: Any, rid: str | None) -> GenerateResult:
            async with limit:
                return await self._generate_one(conversation, params, rid, deadline)

        tasks = [asyncio.ensure_future(one(c, i)) for c, i in zip(messages, _batch_ids(request_id, len(messages)))]
        try:
            return list(await asyncio.gather(*tasks, return_exceptions=return_exceptions))
        finally:
            for task in tasks:
                task.cancel()  # after the first failure, stop the rest (a no-op for finished tasks)

    async def _generate_one(self, conversation: Any, params: Any, request_id: str | None, deadline: float | None):
        request = await asyncio.to_thread(self._request, conversation, params, request_id, False)
        generation, _ = self._stubs()
        timeout = self._remaining(deadline)
        try:
            with self._span(GENERATE, self.target, params) as span:
                reply = await generation.Generate(request, timeout=timeout, metadata=self._metadata(span))
                span.set_attributes(generation_attributes(reply, stream=False))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        return GenerateResult.from_proto(reply)

    def stream(
        self, messages: Any, *, timeout: float | None = None, request_id: str | None = None, **sampling: Any
    ) -> AsyncIterator[StreamDelta]:
        """`async for delta in client.stream(messages): ...` Arguments are checked now, media on the first
        iteration; leaving the loop early cancels the call on the server."""
        params = sampling_params(**sampling)
        conversation = _one_conversation(messages, "stream()")
        return self._stream(conversation, params, request_id, self._deadline(timeout), current_context())

    async def _stream(
        self, conversation: Any, params: Any, request_id: str | None, deadline: float | None, parent: Any
    ) -> AsyncIterator[StreamDelta]:
        request = await asyncio.to_thread(self._request, conversation, params, request_id, True)
        generation, _ = self._stubs()
        timeout = self._remaining(deadline)
        span = self._span(GENERATE_STREAM, self.target, params, parent)
        call = generation.GenerateStream(request, timeout=timeout, metadata=self._metadata(span))
        try:
            with span:
                async for response in call:
                    if response.finish_reason:
                        span.set_attributes(generation_attributes(response, stream=True))
                    yield StreamDelta.from_proto(response)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def encode(
        self,
        media: Any,
        *,
        num_frames: int | None = None,
        timeout: float | None = None,
        return_embeddings: bool = False,
    ) -> list[EncodedMedia]:
        """As InternVLClient.encode."""
        deadline = self._deadline(timeout)
        request = await asyncio.to_thread(self._encode_request, media, num_frames, return_embeddings)
        _, encoder = self._stubs()
        timeout = self._remaining(deadline)
        try:
            with self._span(ENCODE, self.encoder_target) as span:
                reply = await encoder.Encode(request, timeout=timeout, metadata=self._metadata(span))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        return [EncodedMedia.from_proto(e, reply.model) for e in reply.media]
