"""Tenants: whose request this is. The auth interceptor sets the caller's tenant for the handler; the
services key caches by it, so one tenant's media ids and cached KV are invisible to another.

Without authentication there is one tenant, `default`. A trusted caller (the decoder, with a service
token) names the tenant it acts for in the `internvl-tenant` metadata.
"""

from __future__ import annotations

import contextvars
import re

DEFAULT_TENANT = "default"
TENANT_METADATA = "internvl-tenant"
# Tenant names go into Redis keys and span attributes: no separators, no spaces, bounded.
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("internvl_tenant", default=DEFAULT_TENANT)


def valid_tenant(name: str) -> bool:
    return bool(_TENANT.match(name))


def tenant_problem(name: str) -> str | None:
    if valid_tenant(name):
        return None
    return f"tenant {name[:80]!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def current_tenant() -> str:
    """The tenant of the RPC being handled (`default` outside an authenticated call)."""
    return _current.get()


def set_current_tenant(name: str) -> contextvars.Token:
    return _current.set(name)


def reset_current_tenant(token: contextvars.Token) -> None:
    try:
        _current.reset(token)
    except ValueError:  # a stream closed from another context: that context (one RPC's task) ends anyway
        pass
