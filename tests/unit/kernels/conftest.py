"""Kernel tests run the Triton kernels on CPU tensors under the Triton interpreter.

Triton decides interpreter vs compiler for its own library (tl.max, tl.sum, ...) when it is first
imported, so tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton; it stays set for
the session (nothing else in the project depends on it; the kernel package never imports triton before
a launch). The fixture below fails loudly if triton still ended up compiled.
"""

from __future__ import annotations

import pytest
import torch


def _interpreted() -> bool:
    import triton.language as tl

    return type(tl.standard.max).__name__ == "InterpretedFunction"


_INTERPRETED = _interpreted()


@pytest.fixture(autouse=True)
def _require_interpreter():
    if not _INTERPRETED:
        pytest.fail("triton could not be switched to interpreter mode; export TRITON_INTERPRET=1 for the run")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
