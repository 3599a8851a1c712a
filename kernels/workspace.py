"""Preallocated scratch for split-KV decode, so a decode step allocates nothing and can be captured in a
CUDA graph. The decoder allocates one at start-up for its largest batch and passes it to every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DEFAULT_MAX_SPLITS


@dataclass(frozen=True)
class DecodeWorkspace:
    partial_out: torch.Tensor  # fp32 [max_num_seqs, num_q_heads, max_splits, head_dim]
    partial_lse: torch.Tensor  # fp32 [max_num_seqs, num_q_heads, max_splits], log2-domain log-sum-exp

    @classmethod
    def allocate(
        cls,
        max_num_seqs: int,
        num_q_heads: int,
        head_dim: int,
        max_splits: int = DEFAULT_MAX_SPLITS,
        device: torch.device | str = "cuda",
    ) -> DecodeWorkspace:
        if min(max_num_seqs, num_q_heads, head_dim, max_splits) < 1:
            raise ValueError("DecodeWorkspace sizes must all be >= 1")
        shape = (max_num_seqs, num_q_heads, max_splits)
        return cls(
            partial_out=torch.empty(*shape, head_dim, dtype=torch.float32, device=device),
            partial_lse=torch.empty(*shape, dtype=torch.float32, device=device),
        )

    @property
    def max_num_seqs(self) -> int:
        return self.partial_out.shape[0]

    @property
    def max_splits(self) -> int:
        return self.partial_out.shape[2]

    @property
    def nbytes(self) -> int:
        return self.partial_out.nbytes + self.partial_lse.nbytes

    def check(self, num_seqs: int, num_q_heads: int, head_dim: int, device: torch.device) -> None:
        """ValueError unless this workspace can serve a call of that shape on that device."""
        out, lse = self.partial_out, self.partial_lse
        if out.dtype != torch.float32 or lse.dtype != torch.float32:
            raise ValueError("DecodeWorkspace tensors must be float32")
        if out.dim() != 4 or lse.shape != out.shape[:3]:
            raise ValueError(f"DecodeWorkspace shapes {tuple(out.shape)} / {tuple(lse.shape)} do not match")
        if out.device != device or lse.device != device:
            raise ValueError(f"DecodeWorkspace is on {out.device}, the call on {device}")
        if out.stride(-1) != 1 or lse.stride(-1) != 1:
            raise ValueError("DecodeWorkspace tensors must be dense in their last dimension")
        if num_seqs > self.max_num_seqs:
            raise ValueError(f"{num_seqs} sequences exceed the workspace's max_num_seqs {self.max_num_seqs}")
        if out.shape[1] != num_q_heads or out.shape[3] != head_dim:
            raise ValueError(
                f"workspace is for {out.shape[1]} heads x {out.shape[3]} dims, the call has {num_q_heads} x {head_dim}"
            )
