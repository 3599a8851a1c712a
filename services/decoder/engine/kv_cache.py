"""The paged KV cache tensors and how many blocks a memory budget buys."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from internvl_serve.decoder.config import DEFAULT_CPU_KV_CACHE_BYTES, DecoderConfig

# Room left on a GPU for activations when no profile run measured them (tensor-parallel ranks).
FIXED_ACTIVATION_HEADROOM_BYTES = 1 << 30
GRAPH_MARGIN_BYTES = 256 << 20  # captured decode graphs' pool and allocator slack, beyond the profiled peak


def kv_budget_bytes(total: int, fraction: float, used: int, activation_peak: int, margin: int) -> int:
    """What the cache may take on a GPU: the fraction of the device, less what is in use now (weights,
    CUDA context), the activation peak (memory_profile.py) and a margin."""
    return int(total * fraction) - used - activation_peak - margin


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @classmethod
    def for_model(
        cls, text_config, block_size: int, dtype: torch.dtype, num_kv_heads: int | None = None
    ) -> "KVCacheSpec":
        """`num_kv_heads`: this rank's, under tensor parallelism (default: the model's)."""
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        kv_heads = num_kv_heads or text_config.num_key_value_heads
        return cls(text_config.num_hidden_layers, kv_heads, head_dim, block_size, dtype)

    @property
    def bytes_per_block(self) -> int:
        """K and V of every layer for block_size tokens."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * itemsize


def num_kv_blocks(
    config: DecoderConfig, spec: KVCacheSpec, device: torch.device, activation_peak: int | None = None
) -> int:
    """Blocks for the configured budget (call after the weights are on the device). On CUDA without a
    budget: --gpu-memory-fraction of the device less what is in use, the measured `activation_peak`
    (memory_profile.py; else a fixed headroom) and a margin for the decode graphs."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    budget = config.kv_cache_bytes
    if budget is None:
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            peak = FIXED_ACTIVATION_HEADROOM_BYTES if activation_peak is None else activation_peak
            budget = kv_budget_bytes(total, config.gpu_memory_fraction, total - free, peak, GRAPH_MARGIN_BYTES)
        else:
            budget = DEFAULT_CPU_KV_CACHE_BYTES
    blocks = budget // spec.bytes_per_block
    if blocks < 1:
        raise ValueError(
            f"the KV-cache budget ({budget / 2**20:.1f} MiB) holds no block of {spec.bytes_per_block} bytes; "
            "raise --kv-cache-mb or --gpu-memory-fraction"
        )
    return int(blocks)


class KVCache:
    """Per layer, K and V of shape [num_blocks, block_size, num_kv_heads, head_dim] (DESIGN.md section 5).

    Only tensors: which blocks belong to whom is the BlockManager's business.
    """

    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device | str):
        shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        self.spec = spec
        self.num_blocks = num_blocks
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (torch.zeros(shape, dtype=spec.dtype, device=device), torch.zeros(shape, dtype=spec.dtype, device=device))
            for _ in range(spec.num_layers)
        ]

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.spec.bytes_per_block
