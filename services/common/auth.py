"""Bearer-token authentication for both services (--auth-tokens-file).

The file has one token per line, `TOKEN [TENANT]` (tenant `default` when omitted; `#` starts a comment).
The tenant `*` marks a service token: its holder (a decoder) acts for the tenant it names in the
`internvl-tenant` metadata. Calls carry `authorization: Bearer TOKEN`; a missing or unknown token is
UNAUTHENTICATED. grpc.health.v1 and reflection answer without one (Kubernetes probes).

Tokens are compared in constant time (hmac.compare_digest over SHA-256 digests, against every entry) and
never logged or put on spans; the tenant is.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry import trace

from internvl_serve.common.logs import log_event
from internvl_serve.common.rpc_wrap import is_infrastructure, wrap_rpc
from internvl_serve.common.tenancy import (
    DEFAULT_TENANT,
    TENANT_METADATA,
    reset_current_tenant,
    set_current_tenant,
    tenant_problem,
)

log = logging.getLogger("internvl_serve.auth")
SERVICE_TENANT = "*"


@dataclass(frozen=True)
class TokenEntry:
    digest: bytes
    tenant: str  # SERVICE_TENANT: acts for the tenant named in the metadata


class TokenTable:
    def __init__(self, entries: list[TokenEntry]):
        self.entries = entries

    @classmethod
    def from_file(cls, path: str | Path) -> TokenTable:
        """Parse the tokens file; ValueError naming the file and line for anything wrong in it."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--auth-tokens-file {path}: cannot read it ({exc})") from None
        entries, seen = [], set()
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"--auth-tokens-file {path}, line {number}"
            if len(fields) > 2:
                raise ValueError(f"{where}: expected `TOKEN [TENANT]`, got {len(fields)} fields")
            token, tenant = fields[0], fields[1] if len(fields) == 2 else DEFAULT_TENANT
            if len(token) < 16:
                raise ValueError(f"{where}: a token must be at least 16 characters (use `openssl rand -hex 32`)")
            if tenant != SERVICE_TENANT and (problem := tenant_problem(tenant)):
                raise ValueError(f"{where}: {problem}")
            digest = _digest(token)
            if digest in seen:
                raise ValueError(f"{where}: this token is listed twice")
            seen.add(digest)
            entries.append(TokenEntry(digest, tenant))
        if not entries:
            raise ValueError(f"--auth-tokens-file {path}: no tokens in it (every call would be refused)")
        return cls(entries)

    def lookup(self, token: str) -> TokenEntry | None:
        """The entry of `token`, comparing against every entry in constant time."""
        digest = _digest(token)
        found = None
        for entry in self.entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class CallerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def caller_tenant(
    table: TokenTable | None, metadata: tuple[tuple[str, str | bytes], ...], trust_named_tenant: bool = True
) -> str:
    """The tenant a call acts for, or CallerError. A service token acts for the tenant the metadata names;
    a tenant's token only for its own tenant. Without a table, the metadata is trusted when
    `trust_named_tenant` (an encoder behind decoders), else there is one tenant (a client-facing decoder)."""
    values = {key: value for key, value in metadata}
    named = values.get(TENANT_METADATA)
    if isinstance(named, bytes):
        named = named.decode("utf-8", "replace")
    if table is not None:
        header = values.get("authorization")
        if isinstance(header, bytes):
            header = header.decode("utf-8", "replace")
        scheme, _, token = (header or "").partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            raise CallerError(
                grpc.StatusCode.UNAUTHENTICATED, "this service needs a token: send `authorization: Bearer TOKEN`"
            )
        entry = table.lookup(token.strip())
        if entry is None:
            raise CallerError(grpc.StatusCode.UNAUTHENTICATED, "the token is not valid for this service")
        if entry.tenant != SERVICE_TENANT:
            if named is not None and named != entry.tenant:  # e.g. a decoder given a tenant's token
                raise CallerError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this token belongs to one tenant and cannot act for {TENANT_METADATA} {named[:64]!r}; "
                    "a service acting for tenants needs a token listed with tenant `*`",
                )
            return entry.tenant
    elif not trust_named_tenant:
        return DEFAULT_TENANT
    if named is None:
        return DEFAULT_TENANT
    if problem := tenant_problem(named):
        raise CallerError(grpc.StatusCode.INVALID_ARGUMENT, f"{TENANT_METADATA} metadata: {problem}")
    return named


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's token (all methods but health and reflection) and makes its tenant current."""

    def __init__(self, table: TokenTable | None, trust_named_tenant: bool = False):
        """`trust_named_tenant`: without a table, take the tenant the caller names (see caller_tenant)."""
        self.table = table
        self.trust_named_tenant = trust_named_tenant

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if is_infrastructure(method) or handler is None:
            return handler
        if handler.request_streaming:  # rpc_wrap cannot wrap it, so it would escape the token check: fail closed
            raise NotImplementedError(f"{method}: client-streaming RPCs are not wrapped by the auth interceptor")

        @contextlib.asynccontextmanager
        async def admit(context):
            try:
                metadata = tuple(context.invocation_metadata() or ())
                tenant = caller_tenant(self.table, metadata, self.trust_named_tenant)
            except CallerError as exc:
                log_event(log, "auth_refused", logging.WARNING, method=method, code=exc.code.name, peer=context.peer())
                await context.abort(exc.code, str(exc))
            trace.get_current_span().set_attribute("internvl.tenant", tenant)
            token = set_current_tenant(tenant)
            try:
                yield
            finally:
                reset_current_tenant(token)

        return wrap_rpc(handler, admit)
