"""Checkpoints saved already quantized by bitsandbytes (config.json `quantization_config`, as published
"-bnb-4bit" repositories are): each 4-bit Linear weight is stored packed (uint8) with its statistics
(`.absmax`, `.quant_map`, `.quant_state.bitsandbytes__*`, nested ones with double quantization).

They load as they are: the packed weight is dequantized with bitsandbytes' own QuantState, and the service
quantizes it again with the checkpoint's settings. Blockwise quantization keeps each block's absmax (its
largest value maps to the code's +-1), so the second quantization gives back the stored codes, and the
model equals transformers' loading of the same files (tested).
"""

from __future__ import annotations

from typing import Any

import torch

from internvl_serve.checkpoint.errors import CheckpointError


def quantization_of(raw_config: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The checkpoint's bitsandbytes settings as QuantSettings fields, or None (not pre-quantized)."""
    q = raw_config.get("quantization_config")
    if not q:
        return None
    if q.get("quant_method") != "bitsandbytes":
        raise CheckpointError(f"{where}: quantization_config.quant_method {q.get('quant_method')!r} is not supported")
    if q.get("load_in_8bit") or q.get("_load_in_8bit"):
        raise CheckpointError(
            f"{where}: pre-quantized 8-bit checkpoints are not supported; load the bf16/fp32 checkpoint with "
            "--load-in-8bit"
        )
    if not (q.get("load_in_4bit") or q.get("_load_in_4bit")):
        return None
    return {
        "load_in_4bit": True,
        "quant_type": q.get("bnb_4bit_quant_type", "fp4"),
        "compute_dtype": str(q.get("bnb_4bit_compute_dtype") or "float32").removeprefix("torch."),
        "double_quant": bool(q.get("bnb_4bit_use_double_quant", False)),
    }


def stats_keys(stored_key: str, all_keys) -> list[str]:
    """The statistics stored next to a packed weight."""
    return [k for k in all_keys if k.startswith(stored_key + ".")]


def dequantize(packed: torch.Tensor, stats: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """The float weight a packed 4-bit weight stands for (bitsandbytes' QuantState and dequantize_4bit)."""
    import bitsandbytes.functional as F

    state = F.QuantState.from_dict(stats, device=packed.device)
    weight = F.dequantize_4bit(packed, state)
    if tuple(weight.shape) != shape:
        raise CheckpointError(f"a packed weight dequantizes to {tuple(weight.shape)}, config.json implies {shape}")
    return weight
