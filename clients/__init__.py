"""Python client library, CLI and the generated gRPC stubs (internvl_serve.clients).

    from internvl_serve.clients import InternVLClient, AsyncInternVLClient, InternVLError

The public names are loaded on first use, so importing the stubs (internvl_serve.pb...) stays
light: it does not import the client, PIL, numpy or PyAV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "InternVLClient": "client",
    "AsyncInternVLClient": "client",
    "GenerateResult": "results",
    "StreamDelta": "results",
    "Usage": "results",
    "EncodedMedia": "results",
    "ChannelSettings": "channel",
    "UrlPolicy": "fetch",
    "SAMPLING_KWARGS": "sampling",
    "InternVLError": "errors",
    "InvalidArgumentError": "errors",
    "InputError": "errors",
    "MediaError": "errors",
    "NotFoundError": "errors",
    "ResourceExhaustedError": "errors",
    "UnavailableError": "errors",
    "DeadlineExceededError": "errors",
    "CancelledError": "errors",
    "UnauthenticatedError": "errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from internvl_serve.clients.channel import ChannelSettings
    from internvl_serve.clients.client import AsyncInternVLClient, InternVLClient
    from internvl_serve.clients.errors import (
        CancelledError,
        DeadlineExceededError,
        InputError,
        InternVLError,
        InvalidArgumentError,
        MediaError,
        NotFoundError,
        ResourceExhaustedError,
        UnauthenticatedError,
        UnavailableError,
    )
    from internvl_serve.clients.fetch import UrlPolicy
    from internvl_serve.clients.results import EncodedMedia, GenerateResult, StreamDelta, Usage
    from internvl_serve.clients.sampling import SAMPLING_KWARGS


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
