"""Launch configurations and the decode split count: plain functions, so they are testable on the CPU.

No `triton.autotune`: with several configs it needs a GPU driver, and a serving process wants the same
config every step (CUDA graphs capture one grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The decode scratch holds at most this many splits per (sequence, head) unless a workspace says otherwise.
DEFAULT_MAX_SPLITS = 32
# A split shorter than this spends more on its launch share and the merge than it saves.
MIN_TOKENS_PER_SPLIT = 256
# Resident programs per SM the decode grid aims for: enough loads in flight to cover HBM latency.
DECODE_PROGRAMS_PER_SM = 4


@dataclass(frozen=True)
class PrefillConfig:
    block_m: int  # rows of the score tile: query tokens x heads of one GQA group, packed
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int

    def block_q(self, group: int) -> int:
        """Query tokens per program: as many whole GQA groups as fit in block_m rows."""
        return max(1, self.block_m // group)


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def prefill_config(head_dim: int, group: int, interpret: bool) -> PrefillConfig:
    """Tile sizes for the varlen prefill kernel."""
    block_m = max(16, next_pow2(group))
    if interpret:
        # Small tiles keep the interpreter fast and make short test sequences cross tile borders.
        return PrefillConfig(block_m=max(block_m, 32), block_n=32, num_warps=4, num_stages=1)
    block_m = max(block_m, 128)
    if head_dim <= 64:
        return PrefillConfig(block_m=block_m, block_n=64, num_warps=4, num_stages=3)
    if head_dim <= 128:
        return PrefillConfig(block_m=block_m, block_n=64, num_warps=8, num_stages=3)
    return PrefillConfig(block_m=block_m, block_n=32, num_warps=8, num_stages=2)


def decode_config(head_dim: int, interpret: bool) -> DecodeConfig:
    """Tile sizes for the split-KV decode kernel (memory bound: tiles sized for loads in flight)."""
    if interpret:
        return DecodeConfig(block_n=32, num_warps=4, num_stages=1)
    if head_dim <= 64:
        return DecodeConfig(block_n=64, num_warps=4, num_stages=3)
    return DecodeConfig(block_n=64, num_warps=4, num_stages=2)


def choose_num_splits(
    num_seqs: int,
    num_kv_heads: int,
    max_seq_len: int,
    num_sms: int,
    max_splits: int = DEFAULT_MAX_SPLITS,
    min_tokens_per_split: int = MIN_TOKENS_PER_SPLIT,
) -> int:
    """How many KV splits each (sequence, KV head) program is cut into.

    Split only when the natural grid (num_seqs x num_kv_heads) leaves SMs idle: the largest count that
    keeps the grid within one wave of DECODE_PROGRAMS_PER_SM programs per SM (rounding up would start a
    second, mostly idle wave), never below `min_tokens_per_split` keys per split, and never above
    `max_splits` (the scratch size).
    """
    if num_seqs <= 0 or num_kv_heads <= 0 or max_seq_len <= 0 or num_sms <= 0:
        return 1
    programs = num_seqs * num_kv_heads
    wanted = num_sms * DECODE_PROGRAMS_PER_SM // programs
    by_length = max(1, -(-max_seq_len // min_tokens_per_split))
    return max(1, min(wanted, by_length, max_splits))


def num_sms(device: torch.device) -> int:
    """SM count of a CUDA device; a stand-in of 132 (H100) when interpreting on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132
