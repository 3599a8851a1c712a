"""What a service reads at start to decide who may call it: its TLS credentials and its token table.

Bad files (missing, unreadable, not PEM, a key that is not the certificate's, a malformed tokens file)
raise StartupError, which the command turns into a usage error (exit 2) before anything listens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from internvl_serve.common.auth import TokenTable
from internvl_serve.common.config_fields import setting
from internvl_serve.common.errors import StartupError


def auth_tokens_setting() -> Any:
    return setting(
        None,
        "file of `TOKEN [TENANT]` lines: calls need `authorization: Bearer TOKEN` (health and reflection do not)",
        flag="--auth-tokens-file",
        env="INTERNVL_AUTH_TOKENS_FILE",
    )


@dataclass(frozen=True)
class Security:
    credentials: grpc.ServerCredentials | None  # None: plaintext
    tokens: TokenTable | None  # None: no authentication (one tenant, or the one a caller names)

    @classmethod
    def load(cls, config: Any) -> Security:
        """`config` has `tls` (ServerTls) and `auth_tokens_file`."""
        try:
            credentials = config.tls.credentials() if config.tls.enabled else None
            tokens = TokenTable.from_file(config.auth_tokens_file) if config.auth_tokens_file else None
        except ValueError as exc:
            raise StartupError(str(exc)) from None  # the message names the flag and the file
        return cls(credentials, tokens)
