"""Sequence: the state of one request as the scheduler and the model runner see it."""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from internvl_serve.decoder.engine.block_hash import MediaLayout, hash_block, tensor_digest
from internvl_serve.decoder.engine.request import FinishReason
from internvl_serve.decoder.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # admitted: holds KV blocks and is prefilled or decoded each step
    FINISHED = "finished"  # done, cancelled or expired: holds no blocks


@dataclass(eq=False)
class Sequence:
    """Prompt, media, output so far and progress of one request.

    Tokens are prompt_ids + output_ids; the first `num_computed_tokens` of them have K/V in the cache.
    Media embeddings replace the embeddings of the prompt tokens at `media_positions` (ascending), row i
    of `media_embeddings` at position media_positions[i]. They are kept until the sequence finishes, so a
    preempted sequence can be recomputed.
    """

    seq_id: int
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int  # resolved: never 0, never past the context
    eos_ids: frozenset[int]  # empty when ignore_eos
    media_positions: list[int] = field(default_factory=list)
    media_embeddings: torch.Tensor | None = None  # [len(media_positions), hidden] on the model's device
    media_cache_hits: int = 0
    # (content hash, rows) of each media item in row order: part of the KV blocks' prefix-cache hashes
    media_items: list[tuple[bytes, int]] = field(default_factory=list)
    cache_salt: bytes = b""  # prefix-cache scope (the tenant): blocks are shared only within one salt
    arrival_time: float = 0.0  # time.monotonic()
    first_scheduled_time: float | None = None  # time.monotonic() of its first step (queue time = this - arrival)
    deadline: float | None = None  # time.monotonic() instant
    generator: torch.Generator | None = None  # per-request RNG for sampling (None: greedy)
    grammar: Any = None  # llguidance LLMatcher of a constrained reply (structured_output.py)
    output_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    finish_reason: FinishReason | None = None
    cancelled: bool = False
    num_preemptions: int = 0
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache at first admission
    _block_hashes: list[bytes] = field(default_factory=list, repr=False)
    _media_layout: MediaLayout | None = field(default=None, repr=False)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Prompt (and any recomputed output) is cached; only the last sampled token is new."""
        return self.num_computed_tokens >= self.num_prompt_tokens and self.num_uncomputed_tokens == 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_image_tokens(self) -> int:
        return len(self.media_positions)

    def token_ids(self, start: int = 0, end: int | None = None) -> list[int]:
        """Tokens [start, end) of prompt + output."""
        end = self.num_tokens if end is None else end
        n = len(self.prompt_ids)
        if end <= n:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[max(0, start - n) : end - n]

    def all_token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def media_rows(self, start: int, end: int) -> tuple[list[int], torch.Tensor | None]:
        """Media positions in [start, end) (relative to start) and their embedding rows."""
        lo = bisect.bisect_left(self.media_positions, start)
        hi = bisect.bisect_left(self.media_positions, end)
        if lo == hi or self.media_embeddings is None:
            return [], None
        return [p - start for p in self.media_positions[lo:hi]], self.media_embeddings[lo:hi]

    def block_hashes(self, num_blocks: int, block_size: int) -> list[bytes]:
        """Content hashes of the first `num_blocks` full blocks of prompt + output (each computed once)."""
        hashes = self._block_hashes
        if len(hashes) < num_blocks:
            tokens = self.token_ids(len(hashes) * block_size, num_blocks * block_size)
            base = len(hashes) * block_size
            layout = self._layout()
            for i in range(len(hashes), num_blocks):
                start = i * block_size
                block = tokens[start - base : start - base + block_size]
                media = layout.segments(start, start + block_size) if layout is not None else []
                hashes.append(hash_block(hashes[-1] if hashes else None, block, media, self.cache_salt))
        return hashes[:num_blocks]

    def _layout(self) -> MediaLayout | None:
        if not self.media_positions:
            return None
        if self._media_layout is None:
            # Built in code without item hashes (engine tests): the rows' own values identify them.
            items = self.media_items or [(tensor_digest(self.media_embeddings), len(self.media_positions))]
            self._media_layout = MediaLayout(self.media_positions, items)
        return self._media_layout
