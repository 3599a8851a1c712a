"""A cap on the calls a service works on at once (--max-in-flight): beyond it a call is refused at once
with RESOURCE_EXHAUSTED, before its request is looked at, so a flood cannot queue unbounded memory
(each call holds its request, up to --max-receive-mb, and its media). Health and reflection are not
counted, so probes keep answering under load.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc

from internvl_serve.common.config_fields import setting
from internvl_serve.common.errors import ResourceExhausted
from internvl_serve.common.rpc_wrap import is_infrastructure, wrap_rpc


def max_in_flight_setting(default: int) -> Any:
    return setting(default, "calls handled at once; more get RESOURCE_EXHAUSTED (retry with backoff)")


class InFlightLimit(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int, kind: str):
        self.limit = limit
        self.kind = kind
        self.in_flight = 0

    def _message(self) -> str:
        return (
            f"this {self.kind} is handling {self.in_flight} calls, its limit (--max-in-flight {self.limit}); "
            "retry with backoff or add replicas"
        )

    def try_acquire(self) -> bool:
        """Take a slot if one is free (the HTTP API shares the gRPC calls' limit); release() gives it back."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(self._message())

    @contextlib.asynccontextmanager
    async def _admit(self, context):
        if not self.try_acquire():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._message())
        try:
            yield
        finally:
            self.release()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if is_infrastructure(handler_call_details.method):
            return handler
        return wrap_rpc(handler, self._admit)
