"""Domain errors and the one table that maps them to gRPC status codes (DESIGN.md section 7.3).

Services raise these; one server interceptor turns them into statuses. Messages are for a person to act
on: they name the field or input at fault and what would be accepted. Never a traceback, never INTERNAL
for something a client sent.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of every error a service answers with on purpose."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    """The request is wrong and retrying it unchanged will fail again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidMedia(InvalidArgument):
    """An image or video that cannot be decoded or is outside the limits."""


class ResourceExhausted(ServiceError):
    """Too big or too much right now (message size, queue full)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(ServiceError):
    """An unknown or expired id (for example a media_id no longer in the cache)."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    """Draining, or a dependency (an encoder) cannot be reached after retries."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class StartupError(ValueError):
    """A setting the service can only check at start (a TLS or tokens file, an encoder address that does
    not resolve): the command reports it as a usage error, exit 2, before anything listens."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a client sees for `exc`; unexpected exceptions become INTERNAL with no details."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server logged the details"
