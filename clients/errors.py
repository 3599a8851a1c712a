"""Typed exceptions of the client: one class per gRPC status code a caller handles differently.

Every error carries the status `code` (a `grpc.StatusCode`) and the server's `details`, so callers can
branch on the type (`except NotFoundError:` -> send the bytes again) or log the code. Errors the client
finds itself, before any call (a missing file, a url it may not fetch, a malformed message), are
`InputError`s: they are `INVALID_ARGUMENT` too, and also `ValueError`s.
"""

from __future__ import annotations

import grpc


class InternVLError(Exception):
    """Base of every error the client raises on purpose. `code` is a grpc.StatusCode, `details` the text."""

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None):
        super().__init__(details)
        self.details = details
        self.code = code if code is not None else self.default_code

    @property
    def code_name(self) -> str:
        """The status name, e.g. "INVALID_ARGUMENT"."""
        return self.code.name

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgumentError(InternVLError):
    """The request is malformed (bad media, messages or sampling values); do not retry it unchanged."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class InputError(InvalidArgumentError, ValueError):
    """Raised by the client itself before calling a server: bad message shape, sampling value or media."""


class MediaError(InputError):
    """A media item the client cannot turn into bytes: missing file, url not allowed or not fetched, ..."""


class NotFoundError(InternVLError):
    """An unknown or expired media_id: send the media bytes again (or Encode them again)."""

    default_code = grpc.StatusCode.NOT_FOUND


class ResourceExhaustedError(InternVLError):
    """Too many or too large media items, or the server is overloaded: shrink, or retry with backoff."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(InternVLError):
    """The server cannot be reached, is not ready or is draining: retry later or on another replica."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(InternVLError):
    """The call's deadline (`timeout=`) passed before the answer came."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(InternVLError):
    """The call was cancelled."""

    default_code = grpc.StatusCode.CANCELLED


class UnauthenticatedError(InternVLError):
    """No token, or one the server does not know: pass token= (or set INTERNVL_TOKEN)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[InternVLError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def error_for_status(code: grpc.StatusCode, details: str | None) -> InternVLError:
    """The typed exception for a status; codes without a class of their own give the base InternVLError."""
    kind = _BY_CODE.get(code, InternVLError)
    return kind(details or code.name, code)


def from_rpc_error(exc: grpc.RpcError) -> InternVLError:
    """Turn a grpc.RpcError (sync) or grpc.aio.AioRpcError into the client's typed exception."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for_status(code or grpc.StatusCode.UNKNOWN, details)
