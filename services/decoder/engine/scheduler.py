"""Scheduler: decides what runs each step. It moves sequences between queues and asks the BlockManager
for blocks; it never touches tensors.

Policy (DESIGN.md section 6): running decodes first (oldest first), then prefill chunks of running
sequences, then admissions from the waiting queue, all within `max_tokens_per_step` tokens (chunked
prefill, so a long prompt never stalls the running streams). When a decode needs a block and none is
free, the most recently admitted running sequence is preempted: its blocks are freed and it goes back to
the front of the waiting queue, to be recomputed (prompt + output so far) when it is admitted again.

A step ends in `update_from_output` (the one postprocess, as in nano-vllm and vLLM v1): it advances each
chunk's computed tokens, appends the sampled tokens, applies the token-level stopping rules (eos,
max_new_tokens) and finishes and frees what stopped. Stop strings need text: the engine's output stream
checks them and calls `finish`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from internvl_serve.common.errors import ResourceExhausted
from internvl_serve.decoder.engine.block_manager import BlockManager
from internvl_serve.decoder.engine.request import FinishReason
from internvl_serve.decoder.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledChunk:
    """Compute tokens [start, start + num_tokens) of `seq` this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def samples(self) -> bool:
        """The chunk reaches the sequence's last token, so the step samples its next one."""
        return self.end == self.seq.num_tokens


@dataclass(frozen=True)
class SampledToken:
    """A token appended to `seq` by update_from_output; `finish_reason` is set when it stopped the sequence
    (which is then finished and its blocks freed)."""

    seq: Sequence
    token: int
    finish_reason: FinishReason | None


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)  # decodes first, then prefill chunks
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_tokens_per_step: int, max_queue: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_tokens_per_step = max_tokens_per_step
        self.max_queue = max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order, oldest first
        self.num_prompt_tokens = 0  # admitted requests' prompt tokens (prefix-cache hit rate)
        self.num_cached_prompt_tokens = 0

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; ResourceExhausted when the queue is full or it could never fit the cache."""
        bm = self.block_manager
        needed = bm.blocks_for(seq.num_prompt_tokens + seq.max_new_tokens - 1)  # the last token is never cached
        if needed > bm.num_total_blocks:
            raise ResourceExhausted(
                f"the prompt ({seq.num_prompt_tokens} tokens) plus max_new_tokens ({seq.max_new_tokens}) needs "
                f"{needed} KV-cache blocks of {bm.block_size} tokens, but the server's cache holds "
                f"{bm.num_total_blocks}; send a shorter prompt or a smaller max_new_tokens"
            )
        if len(self.waiting) >= self.max_queue:
            raise ResourceExhausted(
                f"the server is overloaded ({len(self.waiting)} requests waiting, limit {self.max_queue}); "
                "retry with backoff"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: FinishReason | None = None) -> None:
        """Finished, cancelled or expired: leave the queues and free the blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq.seq_id)
        seq.status = SequenceStatus.FINISHED
        if reason is not None:
            seq.finish_reason = reason

    def update_from_output(self, out: SchedulerOutput, sampled: list[int]) -> list[SampledToken]:
        """Apply a step's result. `sampled` holds one token per chunk that samples, in chunk order. A
        sequence finished while the step ran (cancelled, expired) is left as it is and its token dropped."""
        tokens = iter(sampled)
        appended = []
        bm = self.block_manager
        for chunk in out.chunks:
            token = next(tokens) if chunk.samples else None
            seq = chunk.seq
            if seq.is_finished:
                continue
            seq.num_computed_tokens = chunk.end
            if bm.enable_prefix_caching:  # full blocks now computed become reusable
                bm.register_full_blocks(seq.seq_id, seq.block_hashes(chunk.end // bm.block_size, bm.block_size))
            if token is None:
                continue
            seq.output_ids.append(token)
            reason = _stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason)
            appended.append(SampledToken(seq, token, reason))
        return appended

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        while True:
            self._schedule_pass(out)
            if out.chunks or not self.running:
                return out
            # Running sequences exist but none could get a block (prefills that grew into each other):
            # preempt the newest and try again; each pass frees blocks, so this ends.
            self._preempt(self.running[-1], out)

    def _schedule_pass(self, out: SchedulerOutput) -> None:
        bm = self.block_manager
        budget = self.max_tokens_per_step
        preempted_now: set[int] = set()
        scheduled: set[int] = set()
        for seq in [s for s in self.running if s.is_decoding]:
            if seq.status is not SequenceStatus.RUNNING or budget == 0:
                continue
            while not bm.can_grow(seq.seq_id, seq.num_tokens):
                victim = next((s for s in reversed(self.running) if s is not seq and s.seq_id not in scheduled), seq)
                self._preempt(victim, out)
                preempted_now.add(victim.seq_id)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                budget -= self._take(seq, 1, out)
                scheduled.add(seq.seq_id)
        for seq in [s for s in self.running if not s.is_decoding]:
            if budget == 0:
                break
            room = bm.max_tokens(seq.seq_id) - seq.num_computed_tokens
            n = min(seq.num_uncomputed_tokens, budget, room)
            if n > 0:
                budget -= self._take(seq, n, out)
        in_flight = self._blocks_in_flight()
        held_back: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.seq_id in preempted_now:
                break
            reusable = self._reusable_hashes(seq)
            hits = reusable[: bm.num_cached_prefix_blocks(reusable)]
            if len(hits) < len(reusable) and reusable[len(hits)] in in_flight:
                # A running prefill is computing this prompt's next block (the same image or prefix sent
                # at the same time): wait a step or more and reuse it rather than compute it twice.
                held_back.append(self.waiting.popleft())
                continue
            # Admit only what can be held whole now, so a started prompt is not starved of blocks.
            if not bm.can_admit(hits, seq.num_tokens):
                break
            self.waiting.popleft()
            bm.take_cached_prefix(seq.seq_id, hits)
            seq.num_computed_tokens = len(hits) * bm.block_size
            if seq.num_preemptions == 0:  # first admission: what the request is told and counted for
                seq.num_cached_tokens = min(seq.num_computed_tokens, seq.num_prompt_tokens)
                self.num_prompt_tokens += seq.num_prompt_tokens
                self.num_cached_prompt_tokens += seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            budget -= self._take(seq, min(seq.num_uncomputed_tokens, budget), out)
            if bm.enable_prefix_caching:  # what it computes now, later admissions wait for
                in_flight.update(seq.block_hashes(seq.num_prompt_tokens // bm.block_size, bm.block_size)[len(hits) :])
        self.waiting.extendleft(reversed(held_back))  # first in line again, in their order

    def _blocks_in_flight(self) -> set[bytes]:
        """Hashes of the full prompt blocks that running sequences have yet to compute."""
        bm = self.block_manager
        if not bm.enable_prefix_caching:
            return set()
        pending: set[bytes] = set()
        for seq in self.running:
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                full = seq.block_hashes(seq.num_prompt_tokens // bm.block_size, bm.block_size)
                pending.update(full[seq.num_computed_tokens // bm.block_size :])
        return pending

    def _reusable_hashes(self, seq: Sequence) -> list[bytes]:
        """Hashes of the full blocks a cached prefix may cover: all but the one holding the last token (the
        step that computes it samples the next one). Empty without prefix caching."""
        bm = self.block_manager
        if not bm.enable_prefix_caching:
            return []
        return seq.block_hashes((seq.num_tokens - 1) // bm.block_size, bm.block_size)

    def _take(self, seq: Sequence, n: int, out: SchedulerOutput) -> int:
        start = seq.num_computed_tokens
        self.block_manager.grow(seq.seq_id, start + n, expected_tokens=seq.num_prompt_tokens + seq.max_new_tokens)
        out.chunks.append(ScheduledChunk(seq, start, n))
        return n

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        """Free the sequence's blocks and queue it first for recompute (output so far is kept)."""
        self.running.remove(seq)
        self.block_manager.free(seq.seq_id)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.chunks = [c for c in out.chunks if c.seq is not seq]
        out.preempted.append(seq)


def _stop_reason(seq: Sequence, token: int) -> FinishReason | None:
    """Token-level stopping rules. max_new_tokens is resolved so the prompt plus it fits the context, so
    reaching it also covers the context length."""
    if token in seq.eos_ids:
        return FinishReason.STOP
    if len(seq.output_ids) >= seq.max_new_tokens:
        return FinishReason.LENGTH
    return None
