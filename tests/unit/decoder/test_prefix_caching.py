"""Prefix caching in the block manager and the scheduler: hashes, sharing, ref counts, LRU eviction."""

from __future__ import annotations

import torch

from internvl_serve.decoder.engine.block_hash import MediaLayout, hash_block
from internvl_serve.decoder.engine.block_manager import BlockManager
from internvl_serve.decoder.engine.sampling_params import SamplingParams
from internvl_serve.decoder.engine.scheduler import Scheduler
from internvl_serve.decoder.engine.sequence import Sequence

BS = 4
_ids = iter(range(10**6))


def seq(tokens, max_new=4, media_positions=(), media_items=(), embeddings=None) -> Sequence:
    return Sequence(
        next(_ids),
        "r",
        list(tokens),
        SamplingParams(),
        max_new,
        frozenset(),
        media_positions=list(media_positions),
        media_embeddings=embeddings,
        media_items=list(media_items),
    )


def test_block_hashes_chain_tokens_and_media_content():
    a = seq(range(12)).block_hashes(3, BS)
    assert a == seq(range(12)).block_hashes(3, BS)  # stable: not Python's hash()
    assert seq([0, 1, 2, 3, 9, 9, 9, 9]).block_hashes(2, BS)[0] == a[0]
    assert seq([0, 1, 2, 3, 9, 9, 9, 9]).block_hashes(2, BS)[1] != a[1]
    assert seq([5, 1, 2, 3, 4, 5, 6, 7]).block_hashes(2, BS)[1] != a[1]  # the parent is part of the hash
    same_tokens = [1, 2, 7, 7, 7, 7, 3, 4]
    one = seq(same_tokens, media_positions=range(2, 6), media_items=[(b"image-one", 4)]).block_hashes(2, BS)
    two = seq(same_tokens, media_positions=range(2, 6), media_items=[(b"image-two", 4)]).block_hashes(2, BS)
    assert one[0] != two[0] and one[1] != two[1]  # same placeholders, different images


def test_media_layout_names_the_item_and_rows_of_each_block():
    layout = MediaLayout(list(range(2, 8)) + [10, 11], [(b"a", 4), (b"b", 4)])
    assert layout.segments(0, 4) == [(b"a", 0, 2)]
    assert layout.segments(4, 8) == [(b"a", 2, 2), (b"b", 0, 2)]
    assert layout.segments(8, 12) == [(b"b", 2, 2)]
    assert layout.segments(12, 16) == []
    assert hash_block(None, [1], [(b"a", 0, 2)]) != hash_block(None, [1], [(b"a", 1, 2)])


def test_embeddings_identify_media_when_no_content_hash_is_given():
    tokens = [1, 7, 7, 2]
    x = seq(tokens, media_positions=[1, 2], embeddings=torch.ones(2, 3)).block_hashes(1, BS)
    y = seq(tokens, media_positions=[1, 2], embeddings=torch.zeros(2, 3)).block_hashes(1, BS)
    assert x != y


def _fill(bm: BlockManager, s: Sequence) -> None:
    bm.grow(s.seq_id, s.num_tokens)
    bm.register_full_blocks(s.seq_id, s.block_hashes(s.num_tokens // BS, BS))


def test_shared_blocks_are_ref_counted_and_stay_cached_after_free():
    bm = BlockManager(8, BS, enable_prefix_caching=True)
    a = seq(range(9))
    _fill(bm, a)
    table = bm.block_table(a.seq_id)
    b = seq(range(9))
    hashes = b.block_hashes(2, BS)
    assert bm.num_cached_prefix_blocks(hashes) == 2 and bm.can_admit(hashes, 9)
    bm.take_cached_prefix(b.seq_id, hashes)
    assert bm.block_table(b.seq_id) == table[:2]
    assert bm.num_free_blocks == 5  # a: 3 blocks, b shares 2 of them
    bm.free(a.seq_id)
    assert bm.num_free_blocks == 6  # a's last block is empty again; the shared two are b's
    bm.free(b.seq_id)
    assert bm.num_free_blocks == 8 and bm.num_cached_blocks == 2  # unreferenced, still cached, free


def test_cached_blocks_are_evicted_least_recently_used_first_and_only_when_needed():
    bm = BlockManager(4, BS, enable_prefix_caching=True)
    old, new = seq(range(8)), seq(range(100, 108))
    for s in (old, new):
        _fill(bm, s)
        bm.free(s.seq_id)
    assert bm.num_cached_blocks == 4 and bm.num_free_blocks == 4
    bm.grow(next(_ids), 8)  # two blocks: the least recently freed content goes
    assert bm.num_cached_prefix_blocks(seq(range(100, 108)).block_hashes(2, BS)) == 2
    assert bm.num_cached_prefix_blocks(seq(range(8)).block_hashes(2, BS)) == 0
    assert bm.num_evictions == 2


def test_without_prefix_caching_nothing_is_registered():
    bm = BlockManager(4, BS)
    a = seq(range(8))
    _fill(bm, a)
    bm.free(a.seq_id)
    assert bm.num_cached_blocks == 0 and bm.num_cached_prefix_blocks(a.block_hashes(2, BS)) == 0


def test_scheduler_reuses_the_longest_cached_prefix_but_computes_the_last_token():
    s = Scheduler(BlockManager(32, BS, enable_prefix_caching=True), 8, 64, 8)
    a = seq(range(12))
    s.add(a)
    while not a.is_finished:
        out = s.schedule()
        s.update_from_output(out, [7] * sum(c.samples for c in out.chunks))
    b = seq(range(12))  # the same 12-token prompt: 3 full blocks, the last one is recomputed
    s.add(b)
    out = s.schedule()
    assert [(c.start, c.num_tokens) for c in out.chunks] == [(8, 4)]
    assert b.num_cached_tokens == 8 and s.num_cached_prompt_tokens == 8 and s.num_prompt_tokens == 24
    c = seq([*range(10), 50, 51, 52])  # shares two full blocks, then differs
    s.add(c)
    out = s.schedule()
    assert [(ch.seq, ch.start) for ch in out.chunks if ch.seq is c] == [(c, 8)]


def test_a_prompt_waits_for_the_block_a_running_prefill_is_computing():
    s = Scheduler(BlockManager(64, BS, enable_prefix_caching=True), 8, 8, 8)  # 8 tokens a step
    a, b, c = seq(range(20)), seq(range(20)), seq(range(100, 104))
    for x in (a, b, c):
        s.add(x)
    out = s.schedule()  # a takes the whole budget; b is held back for a's blocks, c is not
    assert [ch.seq for ch in out.chunks] == [a]
    assert list(s.waiting) == [b, c]
    s.update_from_output(out, [])
    out = s.schedule()
    assert [ch.seq for ch in out.chunks] == [a] and list(s.waiting) == [b, c]  # a's prompt still in flight
    starts = {}
    while s.has_work():
        for ch in out.chunks:
            starts.setdefault(ch.seq, ch.start)
        s.update_from_output(out, [7] * sum(ch.samples for ch in out.chunks))
        out = s.schedule()
    assert starts[b] == 16 and b.num_cached_tokens == 16  # a's four full blocks: only its last token computed
    assert starts[c] == 0


def test_prompts_admitted_in_the_same_step_do_not_compute_a_shared_prefix_twice():
    s = Scheduler(BlockManager(64, BS, enable_prefix_caching=True), 8, 64, 8)  # budget for both at once
    a, b = seq(range(20)), seq(range(20))
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert [ch.seq for ch in out.chunks] == [a] and list(s.waiting) == [b]
    starts = {}
    while s.has_work():
        for ch in out.chunks:
            starts.setdefault(ch.seq, ch.start)
        s.update_from_output(out, [7] * sum(ch.samples for ch in out.chunks))
        out = s.schedule()
    assert starts[b] == 16
