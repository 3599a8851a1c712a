"""The OpenAI-compatible HTTP API as a Starlette app over the decoder's GenerationServicer.

Routes: POST /v1/chat/completions (JSON, or server-sent events with `stream: true`), GET /v1/models,
GET /health. Each chat becomes an internvl.v1.GenerateRequest and runs through the same servicer methods
as a gRPC call (same engine, tracing, drain accounting), with the same tokens (`Authorization: Bearer`)
and tenants. Errors are OpenAI's error JSON with the HTTP status of the gRPC code (openai_response.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from internvl_serve.common.admission import InFlightLimit
from internvl_serve.common.auth import CallerError, TokenTable, caller_tenant
from internvl_serve.common.errors import InvalidArgument, ServiceError, Unavailable, status_for
from internvl_serve.common.logs import log_event
from internvl_serve.common.tenancy import reset_current_tenant, set_current_tenant
from internvl_serve.decoder.http.media_fetch import MediaFetcher
from internvl_serve.decoder.http.openai_request import ChatCall, MediaBudget, MediaTooLargeError, chat_call
from internvl_serve.decoder.http.openai_response import ChunkWriter, completion_json, error_body
from internvl_serve.decoder.service.proto_convert import check_request_id
from internvl_serve.decoder.service.servicer import GenerationServicer

log = logging.getLogger("internvl_serve.decoder.http")
PREPARE_TIMEOUT_S = 60.0  # reading the body and fetching its media, in all
_SLOW_REQUEST = (
    f"reading the request and fetching its media took over {PREPARE_TIMEOUT_S:g} s; send the media as data: "
    "URLs or from a faster host"
)
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # proxies must not buffer the stream


class _NoDeadline:
    """What the servicer asks of a gRPC context: HTTP calls have no deadline (a disconnect cancels them)."""

    def time_remaining(self) -> None:
        return None


def error_response(
    status: grpc.StatusCode, message: str, headers: dict[str, str] | None = None, status_code: int | None = None
) -> JSONResponse:
    http_status, body = error_body(status, message)
    return JSONResponse(body, status_code=status_code or http_status, headers=headers)


class OpenAIApi:
    def __init__(
        self,
        servicer: GenerationServicer,
        tokens: TokenTable | None,
        in_flight: InFlightLimit,
        fetcher: MediaFetcher,
        max_body_bytes: int,
        media_limits: tuple[int, int],
        is_serving: Callable[[], bool],
    ):
        """`media_limits`: (--max-media-per-request, --max-request-media-mb in bytes); `is_serving`: what the
        gRPC health service says (NOT_SERVING during the drain notice, after a failure)."""
        self.media_limits = media_limits
        self.is_serving = is_serving
        self.servicer = servicer
        self.tokens = tokens
        self.in_flight = in_flight  # one --max-in-flight for both APIs
        self.fetcher = fetcher
        self.max_body_bytes = max_body_bytes
        self.created = int(time.time())
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._internal_error},
        )

    # ---- routes -----------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if not self.is_serving():  # gRPC health: NOT_SERVING while loading, draining, or after a failure
            return JSONResponse({"status": "not_serving"}, status_code=503)
        return JSONResponse({"status": "serving"})

    async def models(self, request: Request) -> Response:
        self._tenant(request)
        model = {"id": self.servicer.model_name, "object": "model", "created": self.created, "owned_by": "internvl"}
        return JSONResponse({"object": "list", "data": [model] if self.servicer.model_name else []})

    async def chat_completions(self, request: Request) -> Response:
        try:
            request_id = check_request_id(request.headers.get("x-request-id", "")) or uuid.uuid4().hex
        except InvalidArgument as exc:
            return error_response(exc.code, f"x-request-id header: {exc}")
        headers = {"x-request-id": request_id}
        tenant = self._tenant(request)  # 401/403 before the body is read
        if not self.in_flight.try_acquire():
            exc = self.in_flight.refusal()
            return error_response(exc.code, str(exc), headers)
        scope = set_current_tenant(tenant)
        streaming = False
        try:
            try:  # a slow upload or slow media hosts must not hold the slot for long
                async with asyncio.timeout(PREPARE_TIMEOUT_S):
                    body = await self._json_body(request)
                    self._check_model(body)
                    call = await chat_call(body, request_id, self.fetcher, MediaBudget(*self.media_limits))
            except TimeoutError:
                return error_response(grpc.StatusCode.DEADLINE_EXCEEDED, _SLOW_REQUEST, headers, status_code=408)
            if call.stream:
                response = await self._stream(request, call, headers)
                streaming = True  # the stream releases the slot when it ends
                return response
            return await self._unary(request, call, headers)
        except MediaTooLargeError as exc:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(exc), headers, status_code=413)
        except ServiceError as exc:
            return error_response(exc.code, str(exc), headers)
        finally:
            reset_current_tenant(scope)
            if not streaming:
                self.in_flight.release()

    # ---- chat -------------------------------------------------------------------------------------------

    async def _unary(self, request: Request, call: ChatCall, headers: dict[str, str]) -> Response:
        reply = await _unless_disconnected(request, self.servicer.Generate(call.request, _NoDeadline()))
        if reply is None:  # the client went away: the call was cancelled, its KV blocks freed
            return Response(status_code=499)
        return JSONResponse(completion_json(reply, call.request.sampling.logprobs), headers=headers)

    async def _stream(self, request: Request, call: ChatCall, headers: dict[str, str]) -> Response:
        pump = _StreamPump(self.servicer.GenerateStream(call.request, _NoDeadline()))
        try:  # an error before the first token is the response's status, not an event
            first = await _unless_disconnected(request, pump.next())
        except BaseException:
            await pump.close()
            raise
        if first is None:  # gone while queued or in prefill: cancelled, its slot and KV blocks freed
            await pump.close()
            return Response(status_code=499)
        writer = ChunkWriter(first.request_id, first.model, call.request.sampling.logprobs)

        async def events():
            async with pump, self._slot_held():  # a disconnect closes this generator: the call is cancelled
                msg = first
                try:
                    while True:
                        yield _event(writer.delta(msg))
                        if msg.finish_reason:
                            if call.include_usage:
                                yield _event(writer.usage(msg.usage))
                            break
                        msg = await pump.next()
                except Exception as exc:  # after some tokens: an error event ends the stream
                    if not isinstance(exc, ServiceError):
                        log.exception("HTTP API stream failed")
                    yield _event(error_body(*status_for(exc))[1])
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={**headers, **_SSE_HEADERS})

    @contextlib.asynccontextmanager
    async def _slot_held(self):
        try:
            yield
        finally:
            self.in_flight.release()

    # ---- request checks ---------------------------------------------------------------------------------

    def _tenant(self, request: Request) -> str:
        """The caller's tenant from the same tokens as the gRPC API (CallerError: 401/403)."""
        metadata = tuple((k, v) for k, v in request.headers.items() if k in ("authorization", "internvl-tenant"))
        try:
            return caller_tenant(self.tokens, metadata, trust_named_tenant=False)
        except CallerError as exc:
            log_event(log, "auth_refused", logging.WARNING, method=request.url.path, code=exc.code.name)
            raise HTTPException(401 if exc.code is grpc.StatusCode.UNAUTHENTICATED else 403, str(exc)) from None

    async def _json_body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise HTTPException(413, self._too_large())
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise HTTPException(413, self._too_large())
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except ValueError as exc:
            raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None

    def _too_large(self) -> str:
        return (
            f"the request body is over {self.max_body_bytes // 2**20} MiB (--max-request-media-mb, base64 "
            "included): send smaller media, or fetch it by URL from an allowed host"
        )

    def _check_model(self, body: Any) -> None:
        model = body.get("model") if isinstance(body, dict) else None
        served = self.servicer.model_name
        if model is not None and served and model not in (served, served.rstrip("/").rsplit("/", 1)[-1]):
            raise _ModelNotFound(f"the model {str(model)[:200]!r} is not served here; GET /v1/models lists {served!r}")

    # ---- error pages ------------------------------------------------------------------------------------

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        code = {
            401: grpc.StatusCode.UNAUTHENTICATED,
            403: grpc.StatusCode.PERMISSION_DENIED,
            404: grpc.StatusCode.NOT_FOUND,
        }.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT)
        body = error_body(code, exc.detail)[1]
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.exception("HTTP API request failed")
        return error_response(*status_for(exc))


class _ModelNotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class _StreamPump:
    """Runs a servicer stream in one task of its own (its spans open and close in one context) and hands
    its messages over; an error is raised from next(), closing cancels the call."""

    def __init__(self, stream):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run(stream))

    async def _run(self, stream) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for msg in stream:
                    self._queue.put_nowait(msg)
            self._queue.put_nowait(Unavailable("the reply ended without a finish reason; retry"))  # never read
        except Exception as exc:  # handed to the reader
            self._queue.put_nowait(exc)

    async def next(self):
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _unless_disconnected(request: Request, call):
    """Await `call` unless the client disconnects first (then cancel it and return None)."""
    work = asyncio.ensure_future(call)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself was cancelled (server shutdown): so is the call
        work.cancel()
        raise
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None
    return work.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
