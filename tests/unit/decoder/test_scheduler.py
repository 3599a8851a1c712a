"""Scheduler policy: decodes first, chunked prefill within the token budget, bounded admission, preemption."""

from __future__ import annotations

import pytest

from internvl_serve.common.errors import ResourceExhausted
from internvl_serve.decoder.engine.block_manager import BlockManager
from internvl_serve.decoder.engine.request import FinishReason
from internvl_serve.decoder.engine.sampling_params import SamplingParams
from internvl_serve.decoder.engine.scheduler import Scheduler
from internvl_serve.decoder.engine.sequence import Sequence, SequenceStatus

_ids = iter(range(10**6))


def seq(prompt_len: int, max_new: int = 64) -> Sequence:
    return Sequence(next(_ids), "r", list(range(prompt_len)), SamplingParams(), max_new, frozenset())


def scheduler(num_blocks=64, block_size=4, max_num_seqs=8, max_tokens=32, max_queue=8) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), max_num_seqs, max_tokens, max_queue)


def advance(s: Scheduler, out) -> list:
    """What the engine does after the model ran: hand the scheduler one sampled token (7) per sampling chunk."""
    return s.update_from_output(out, [7] * sum(c.samples for c in out.chunks))


def step(s: Scheduler):
    out = s.schedule()
    advance(s, out)
    return out


def test_long_prompt_is_prefilled_in_chunks_within_the_budget():
    s = scheduler(max_tokens=16)
    a = seq(50)
    s.add(a)
    sizes = []
    while not a.output_ids:
        out = step(s)
        assert out.num_tokens <= 16
        sizes.append([c.num_tokens for c in out.chunks])
    assert sizes == [[16], [16], [16], [2]]
    assert a.num_computed_tokens == 50 and a.is_decoding


def test_running_decodes_go_first_and_keep_going_during_a_long_prefill():
    s = scheduler(max_tokens=16)
    a = seq(5)
    s.add(a)
    step(s)
    assert a.is_decoding
    b = seq(100)
    s.add(b)
    for _ in range(4):
        out = step(s)
        assert out.chunks[0].seq is a and out.chunks[0].num_tokens == 1  # the decode leads every step
        assert [c.seq for c in out.chunks[1:]] == [b] and out.chunks[1].num_tokens == 15
        assert out.num_tokens == 16
    assert len(a.output_ids) == 5 and not b.output_ids


def test_prefill_chunks_share_the_budget_in_arrival_order():
    s = scheduler(max_tokens=16)
    a, b = seq(10), seq(10)
    s.add(a)
    s.add(b)
    out = step(s)
    assert [(c.seq, c.start, c.num_tokens) for c in out.chunks] == [(a, 0, 10), (b, 0, 6)]
    out = step(s)
    assert [(c.seq, c.start, c.num_tokens) for c in out.chunks] == [(a, 10, 1), (b, 6, 4)]


def test_admission_respects_max_num_seqs():
    s = scheduler(max_num_seqs=2)
    seqs = [seq(3) for _ in range(3)]
    for x in seqs:
        s.add(x)
    out = step(s)
    assert {c.seq for c in out.chunks} == set(seqs[:2])
    assert s.num_running == 2 and s.num_waiting == 1
    s.finish(seqs[0], FinishReason.LENGTH)
    out = step(s)
    assert seqs[2] in {c.seq for c in out.chunks}


def test_full_queue_and_oversized_requests_are_resource_exhausted():
    s = scheduler(num_blocks=4, block_size=4, max_queue=2)
    s.add(seq(3, max_new=4))
    s.add(seq(3, max_new=4))
    with pytest.raises(ResourceExhausted, match="overloaded"):
        s.add(seq(3, max_new=4))
    with pytest.raises(ResourceExhausted, match="KV-cache blocks"):
        s.add(seq(10, max_new=8))  # 17 cached tokens (the last is never cached) need 5 blocks of 4
    s.max_queue = 3
    s.add(seq(10, max_new=7))  # 16 cached tokens fit exactly
    assert s.num_waiting == 3


def test_preemption_frees_the_newest_sequence_and_requeues_it_first():
    s = scheduler(num_blocks=4, block_size=4, max_tokens=32)
    old, new = seq(4, max_new=12), seq(4, max_new=12)
    s.add(old)
    s.add(new)
    bm = s.block_manager
    preempted = []
    for _ in range(10):  # each decodes into a second block, then one needs a third: none is free
        out = step(s)
        preempted += out.preempted
        if preempted:
            break
    assert preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0 and new.num_preemptions == 1
    assert s.waiting[0] is new and bm.block_table(new.seq_id) == []
    assert old.status is SequenceStatus.RUNNING and new.output_ids  # output so far is kept for recompute


def test_preempted_sequence_is_recomputed_with_its_output_when_blocks_return():
    s = scheduler(num_blocks=4, block_size=4, max_tokens=32)
    old, new = seq(4, max_new=12), seq(4, max_new=12)
    s.add(old)
    s.add(new)
    while not new.num_preemptions:
        step(s)
    generated = len(new.output_ids)
    s.finish(old, FinishReason.LENGTH)
    out = s.schedule()
    (chunk,) = out.chunks
    assert chunk.seq is new and chunk.start == 0 and chunk.num_tokens == 4 + generated and chunk.samples
    assert new.status is SequenceStatus.RUNNING


def test_finish_frees_blocks_from_any_queue():
    s = scheduler(max_num_seqs=1)
    a, b = seq(9), seq(9)
    s.add(a)
    s.add(b)
    step(s)
    assert s.block_manager.num_free_blocks < s.block_manager.num_total_blocks
    s.finish(a)
    s.finish(b)  # still waiting: leaves the queue
    assert not s.has_work() and s.block_manager.num_free_blocks == s.block_manager.num_total_blocks
    assert a.status is b.status is SequenceStatus.FINISHED


def test_two_requests_that_cannot_fit_together_both_finish():
    # Each needs 4 of the 5 blocks by its end: one is preempted, recomputed later, and both complete.
    s = scheduler(num_blocks=5, block_size=4, max_tokens=8, max_num_seqs=4)
    a, b = seq(10, max_new=6), seq(8, max_new=6)
    s.add(a)
    s.add(b)
    for _ in range(40):
        step(s)
        if not s.has_work():
            break
    assert len(a.output_ids) == 6 and len(b.output_ids) == 6
    assert a.num_preemptions + b.num_preemptions >= 1
    assert s.block_manager.num_free_blocks == 5


def test_update_from_output_advances_appends_and_stops_on_eos_or_length():
    s = scheduler(max_tokens=64)
    a = Sequence(next(_ids), "a", list(range(6)), SamplingParams(), 3, frozenset({99}))
    b = seq(6, max_new=2)
    s.add(a)
    s.add(b)
    out = s.schedule()
    appended = s.update_from_output(out, [5, 6])
    assert [(t.seq, t.token, t.finish_reason) for t in appended] == [(a, 5, None), (b, 6, None)]
    assert a.num_computed_tokens == 6 and a.output_ids == [5]
    appended = s.update_from_output(s.schedule(), [99, 8])  # eos for a, b reaches max_new_tokens
    assert [(t.token, t.finish_reason) for t in appended] == [(99, FinishReason.STOP), (8, FinishReason.LENGTH)]
    assert a.is_finished and b.is_finished and a.finish_reason is FinishReason.STOP
    assert not s.has_work() and s.block_manager.num_free_blocks == s.block_manager.num_total_blocks


def test_update_from_output_skips_a_sequence_finished_while_the_step_ran():
    s = scheduler(max_tokens=64)
    a, b = seq(4), seq(4)
    s.add(a)
    s.add(b)
    out = s.schedule()
    s.finish(a)  # cancelled during the model step
    appended = s.update_from_output(out, [1, 2])
    assert [(t.seq, t.token) for t in appended] == [(b, 2)]
    assert a.output_ids == [] and b.output_ids == [2]


def test_update_from_output_leaves_a_mid_prompt_chunk_without_a_token():
    s = scheduler(max_tokens=8)
    a = seq(20)
    s.add(a)
    out = s.schedule()
    assert not out.chunks[0].samples
    assert s.update_from_output(out, []) == []
    assert a.num_computed_tokens == 8 and a.output_ids == []
