"""Where the Triton path may run, read from the environment at call time.

TRITON_INTERPRET must be set before `triton` is first imported (triton decides interpreter vs compiler for
its own standard library at import); this package therefore imports triton only on the first launch
(see api.py), so importing it for the reference path never fixes the mode too early.
"""

from __future__ import annotations

import os

import torch

_TRUE = {"1", "true", "on", "yes"}


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks for the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def use_triton(device: torch.device) -> bool:
    """The Triton path runs on CUDA tensors, or on CPU tensors under the interpreter."""
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def needs_upcast(dtype: torch.dtype) -> bool:
    """The interpreter computes bf16 as raw 16-bit integers: kernels upcast tiles to fp32 after loading."""
    return dtype == torch.bfloat16 and interpreting()
