"""Sampling keyword arguments of generate()/stream() -> internvl.v1.SamplingParams, checked on the client."""

from __future__ import annotations

import math
from typing import Any

from internvl_serve.clients.errors import InputError
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb

SAMPLING_KWARGS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "ignore_eos",
    "repetition_penalty",
)
_UINT32 = (1 << 32) - 1
_UINT64 = (1 << 64) - 1


def sampling_params(**kwargs: Any) -> pb.SamplingParams:
    """SamplingParams from keyword arguments; None means "server default" for every field.

    Unknown names are a TypeError (like any Python call); out-of-range values an InputError.
    """
    unknown = sorted(set(kwargs) - set(SAMPLING_KWARGS))
    if unknown:
        raise TypeError(f"unexpected sampling argument(s) {', '.join(unknown)}; accepted: {', '.join(SAMPLING_KWARGS)}")
    params = pb.SamplingParams()
    values = {k: v for k, v in kwargs.items() if v is not None}
    if "max_new_tokens" in values:
        params.max_new_tokens = _int(values["max_new_tokens"], "max_new_tokens", 0, _UINT32)
    if "top_k" in values:
        params.top_k = _int(values["top_k"], "top_k", 0, _UINT32)
    if "seed" in values:
        params.seed = _int(values["seed"], "seed", 0, _UINT64)
    if "temperature" in values:
        params.temperature = _float(values["temperature"], "temperature", 0.0, math.inf)
    if "top_p" in values:
        params.top_p = _float(values["top_p"], "top_p", 0.0, 1.0)
    if "repetition_penalty" in values:
        params.repetition_penalty = _float(values["repetition_penalty"], "repetition_penalty", 0.0, math.inf)
    if "ignore_eos" in values:
        if not isinstance(values["ignore_eos"], bool):
            raise InputError(f"ignore_eos must be True or False, got {values['ignore_eos']!r}")
        params.ignore_eos = values["ignore_eos"]
    if "stop" in values:
        params.stop.extend(_stop(values["stop"]))
    return params


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or not low <= value <= high or math.isinf(value):
        bound = f"between {low:g} and {high:g}" if math.isfinite(high) else f">= {low:g} and finite"
        raise InputError(f"{name} must be {bound}, got {value}")
    return value


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise InputError(f"stop must be a string or a list of strings, got {value!r}")
    if len(stops) > 16:
        raise InputError(f"at most 16 stop strings are accepted, got {len(stops)}")
    for s in stops:
        if not 1 <= len(s.encode("utf-8")) <= 256:
            raise InputError(f"each stop string must be 1 to 256 UTF-8 bytes, got {s!r}")
    return list(stops)
