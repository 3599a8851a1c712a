"""Tensor parallelism for Qwen2, Megatron-style: what rank r of N holds and the one collective it needs.

- q/k/v_proj and gate/up_proj are column-parallel: rank r keeps its slice of the output rows, by whole
  heads for attention (q heads [r*H/N, (r+1)*H/N)).
- o_proj and down_proj are row-parallel: rank r keeps the matching input columns; the partial outputs are
  summed with one all-reduce each, so every rank ends the layer with the full hidden state.
- K/V heads: with at least N of them, each rank holds KV/N (and the KV cache of only those); with fewer,
  each KV head is replicated on the N/KV ranks whose q heads use it.
- Embeddings, norms and lm_head are replicated (the vocabulary is 151k x hidden: at most a few GB).

A head count (or intermediate size) that N does not divide is refused before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # output rows split (weights and biases)
_ROW = ("o_proj", "down_proj")  # input columns split


@dataclass(frozen=True)
class TPShard:
    """This process's place in the tensor-parallel group (size 1: no parallelism, no collectives)."""

    rank: int = 0
    size: int = 1

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum the partial outputs of a row-parallel layer over the group (in place)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(x)
        return x


def tp_problems(text_config, size: int) -> list[str]:
    """Why this model cannot be split `size` ways (empty: it can), with the numbers."""
    if size < 1:
        return [f"--tensor-parallel-size must be >= 1, got {size}"]
    heads, kv, inter = text_config.num_attention_heads, text_config.num_key_value_heads, text_config.intermediate_size
    problems = []
    if heads % size:
        problems.append(f"num_attention_heads {heads} is not divisible by --tensor-parallel-size {size}")
    if kv >= size and kv % size:
        problems.append(f"num_key_value_heads {kv} is not divisible by --tensor-parallel-size {size}")
    if kv < size and size % kv:
        problems.append(
            f"--tensor-parallel-size {size} is not a multiple of num_key_value_heads {kv} (with fewer KV heads "
            "than ranks, each KV head is replicated on an equal number of ranks)"
        )
    if inter % size:
        problems.append(f"intermediate_size {inter} is not divisible by --tensor-parallel-size {size}")
    return problems


@dataclass(frozen=True)
class LocalHeads:
    num_heads: int  # q heads on this rank
    num_kv_heads: int  # K/V heads on this rank (and in its KV cache)
    first_kv_head: int  # the model-wide index of this rank's first K/V head


def local_heads(text_config, shard: TPShard) -> LocalHeads:
    heads, kv = text_config.num_attention_heads, text_config.num_key_value_heads
    if kv >= shard.size:
        per_rank = kv // shard.size
        return LocalHeads(heads // shard.size, per_rank, shard.rank * per_rank)
    return LocalHeads(heads // shard.size, 1, shard.rank // (shard.size // kv))  # replicated K/V head


def shard_state(state: dict[str, torch.Tensor], text_config, shard: TPShard) -> dict[str, torch.Tensor]:
    """The tensors rank `shard.rank` keeps (contiguous copies of its slices; the rest unchanged)."""
    if not shard.parallel:
        return state
    slicer = TensorSlicer(text_config, shard)
    return {name: slicer(name, tensor) for name, tensor in state.items()}


class TensorSlicer:
    """name, full tensor -> the slice rank `shard.rank` keeps (also usable while a checkpoint is read)."""

    def __init__(self, text_config, shard: TPShard):
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        local = local_heads(text_config, shard)
        inter = text_config.intermediate_size // shard.size
        self.shard = shard
        self.rows = {
            "q_proj": (shard.rank * local.num_heads * head_dim, local.num_heads * head_dim),
            "k_proj": (local.first_kv_head * head_dim, local.num_kv_heads * head_dim),
            "v_proj": (local.first_kv_head * head_dim, local.num_kv_heads * head_dim),
            "gate_proj": (shard.rank * inter, inter),
            "up_proj": (shard.rank * inter, inter),
        }
        self.cols = {"o_proj": self.rows["q_proj"], "down_proj": self.rows["gate_proj"]}

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not self.shard.parallel:
            return tensor
        parts = name.split(".")
        layer_kind = parts[-2] if len(parts) >= 2 else ""
        if layer_kind in _COLUMN:
            start, length = self.rows[layer_kind]
            tensor = tensor.narrow(0, start, length)
        elif layer_kind in _ROW and parts[-1] == "weight":
            start, length = self.cols[layer_kind]
            tensor = tensor.narrow(1, start, length)
        elif layer_kind in _ROW and parts[-1] == "bias" and self.shard.rank:  # added once, by rank 0
            tensor = torch.zeros_like(tensor)
        return tensor.contiguous()
