"""Triton attention kernels for the decoder, each with a PyTorch reference twin.

Imported as `internvl_serve.kernels`; imports nothing from services/. Intra-package imports are relative,
so benchmarks/gpu_check.py can load this folder by path without the package installed.

Importing this package does not import triton (the first launch does): see api.py.
"""

from .api import decode_attention, prefill_attention, write_kv_cache
from .backend import interpreting, use_triton
from .config import (
    DEFAULT_MAX_SPLITS,
    DecodeConfig,
    PrefillConfig,
    choose_num_splits,
    decode_config,
    prefill_config,
)
from .reference import decode_attention_ref, prefill_attention_ref, write_kv_cache_ref
from .torch_paged import SequenceBlocks, decode_attention_torch, prefill_attention_torch
from .workspace import DecodeWorkspace

__all__ = [
    "DEFAULT_MAX_SPLITS",
    "DecodeConfig",
    "DecodeWorkspace",
    "PrefillConfig",
    "SequenceBlocks",
    "choose_num_splits",
    "decode_attention",
    "decode_attention_ref",
    "decode_attention_torch",
    "decode_config",
    "interpreting",
    "prefill_attention",
    "prefill_attention_ref",
    "prefill_attention_torch",
    "prefill_config",
    "use_triton",
    "write_kv_cache",
    "write_kv_cache_ref",
]
