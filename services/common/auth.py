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
from internvl_serve.common.rpc_wrap import wrap_rpc
from internvl_serve.common.tenancy import (
    DEFAULT_TENANT,
    TENANT_METADATA,
    reset_current_tenant,
    set_current_tenant,
    tenant_problem,
)

log = logging.getLogger("internvl_serve.auth")
SERVICE_TENANT = "*"
# Probes and tooling answer without a token (still behind TLS when it is on).
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


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


def caller_tenant(table: TokenTable | None, metadata: tuple[tuple[str, str | bytes], ...]) -> str:
    """The tenant a call acts for, or CallerError. Without a table every caller is trusted."""
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
            return entry.tenant  # a tenant's own token: whatever the metadata says, it acts for itself
    if named is None:
        return DEFAULT_TENANT
    if problem := tenant_problem(named):
        raise CallerError(grpc.StatusCode.INVALID_ARGUMENT, f"{TENANT_METADATA} metadata: {problem}")
    return named


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's token (all methods but health and reflection) and makes its tenant current."""

    def __init__(self, table: TokenTable | None):
        self.table = table

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return handler

        @contextlib.asynccontextmanager
        async def admit(context):
            try:
                tenant = caller_tenant(self.table, tuple(context.invocation_metadata() or ()))
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
