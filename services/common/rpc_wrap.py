"""One way for our server interceptors to run code around each call: `wrap_rpc(handler, scope)` runs the
handler inside `async with scope(context)`, for unary and server-streaming methods (the only kinds our
services have; client-streaming ones, reflection's, pass through unwrapped)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Scope = Callable[[Any], AbstractAsyncContextManager]  # context -> an async context manager for the call

# Health and reflection: answered without a token, not counted against --max-in-flight, not traced.
INFRASTRUCTURE_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


def is_infrastructure(method: str) -> bool:
    """`method` as gRPC names it: "/package.Service/Method"."""
    return method.lstrip("/").rpartition("/")[0] in INFRASTRUCTURE_SERVICES


def wrap_rpc(handler: grpc.RpcMethodHandler | None, scope: Scope) -> grpc.RpcMethodHandler | None:
    if handler is None:
        return None
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            async with scope(context):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream
        if not inspect.isasyncgenfunction(inner_stream):  # a coroutine that writes (grpc.health.v1 Watch)

            async def unary_stream_writer(request, context):
                async with scope(context):
                    return await inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream_writer, handler.request_deserializer, handler.response_serializer
            )

        async def unary_stream(request, context):
            async with scope(context):
                async for response in inner_stream(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler  # client-streaming: only reflection has them (the auth interceptor refuses any other)
