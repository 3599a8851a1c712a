"""`triton.jit` that picks compiler or interpreter when a kernel is launched, not when it is imported.

`triton.jit` reads TRITON_INTERPRET once, at decoration time. Anything that imports this package before
the kernel tests set the variable (another test file, the decoder) would freeze the compiled mode and the
interpreted tests would then fail on CPU tensors. Deciding per launch makes import order irrelevant.
Kernels built this way must not call other jitted helpers (each mode builds its own function object).
"""

from __future__ import annotations

import os

import torch

_TRUE = {"1", "true", "on", "yes"}


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks for the CPU interpreter (read now, every time)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def use_triton(device: torch.device) -> bool:
    """The Triton path runs on CUDA tensors, or on CPU tensors under the interpreter."""
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


class ModeJit:
    """Holds a kernel's Python function; builds the compiled or interpreted variant on first launch."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__
        self._variants: dict[bool, object] = {}

    def variant(self, interpret: bool):
        built = self._variants.get(interpret)
        if built is None:
            if interpret:
                from triton.runtime.interpreter import InterpretedFunction

                built = InterpretedFunction(self.fn)
            else:
                from triton.runtime.jit import JITFunction

                built = JITFunction(self.fn)
            self._variants[interpret] = built
        return built

    def __getitem__(self, grid):
        return self.variant(interpreting())[grid]


def mode_jit(fn) -> ModeJit:
    return ModeJit(fn)


def needs_upcast(dtype: torch.dtype) -> bool:
    """The interpreter computes bf16 as raw 16-bit integers: kernels upcast tiles to fp32 after loading."""
    return dtype == torch.bfloat16 and interpreting()
