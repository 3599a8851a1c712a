"""Split-KV paged decode kernel vs decode_attention_ref, under the Triton interpreter.

Unused cache slots, padding block-table entries and the scratch buffers are NaN, so reading anything
a split does not own shows up as NaN.
"""

from __future__ import annotations

import pytest
import torch

from internvl_serve.kernels import (
    DecodeConfig,
    DecodeWorkspace,
    decode_attention,
    decode_attention_ref,
    prefill_attention,
)
from internvl_testing.paged_testing import build_paged_kv, max_abs_diff

# Same reasoning as the prefill tests: fp32 differs by summation order (and the split merge);
# 16-bit inputs round P before P @ V and round the output.
# (atol, rtol) for torch.testing.assert_close; |got - want| <= atol + rtol * |want| elementwise.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _inputs(seq_lens, heads, head_dim, dtype, gen, block_size=16):
    kv = build_paged_kv(seq_lens, heads[1], head_dim, dtype, block_size, generator=gen)
    q = torch.randn(len(seq_lens), heads[0], head_dim, generator=gen).to(dtype)
    return q, kv


def _nan_workspace(num_seqs, num_q_heads, head_dim, max_splits):
    ws = DecodeWorkspace.allocate(num_seqs, num_q_heads, head_dim, max_splits, device="cpu")
    ws.partial_out.fill_(float("nan"))
    ws.partial_lse.fill_(float("nan"))
    return ws


def _check(seq_lens, heads, head_dim, dtype, gen, **kwargs):
    q, kv = _inputs(seq_lens, heads, head_dim, dtype, gen, kwargs.pop("block_size", 16))
    args = (q, kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, head_dim**-0.5)
    got = decode_attention(*args, **kwargs)
    want = decode_attention_ref(*args)
    assert got.shape == q.shape and got.dtype == q.dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)  # NaN fails too


@pytest.mark.parametrize(
    "heads, head_dim, dtype",
    [
        ((4, 4), 64, torch.float32),  # group 1
        ((5, 1), 128, torch.float32),  # group 5 (InternVL3-14B: 40/8)
        ((14, 2), 64, torch.float16),  # group 7 (InternVL3-1B: 14/2)
        ((28, 4), 128, torch.float16),
    ],
)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_groups_and_splits(heads, head_dim, dtype, num_splits, gen):
    _check([1, 40, 129, 77], heads, head_dim, dtype, gen, num_splits=num_splits)


def test_splits_that_end_up_empty(gen):
    # 32-key tiles (interpreter config): a length-40 sequence has 2 tiles, so 6 of 8 splits are empty;
    # length 1 leaves 7 of 8 empty. The NaN scratch proves the merge reads only what this call wrote.
    ws = _nan_workspace(3, 7, 64, 8)
    _check([40, 1, 300], (7, 1), 64, torch.float32, gen, num_splits=8, workspace=ws)


def test_default_split_choice_with_workspace(gen):
    ws = _nan_workspace(6, 4, 64, 4)
    _check([300, 5, 64, 1, 33, 250], (4, 2), 64, torch.float32, gen, workspace=ws)


def test_many_sequences_of_mixed_lengths(gen):
    lens = [1, 2, 15, 16, 17, 31, 32, 33, 64, 100, 200, 299]
    _check(lens, (4, 2), 64, torch.float32, gen, num_splits=4)


def test_bf16_is_upcast_under_the_interpreter(gen):
    _check([3, 90], (5, 1), 64, torch.bfloat16, gen, num_splits=2)


@pytest.mark.parametrize("block_size, block_n", [(32, 16), (8, 64)])
def test_tile_and_block_sizes(block_size, block_n, gen):
    cfg = DecodeConfig(block_n=block_n, num_warps=4, num_stages=1)
    _check([70, 9, 1], (7, 1), 64, torch.float32, gen, block_size=block_size, num_splits=2, config=cfg)


def test_decode_equals_prefill_of_the_last_token(gen):
    q, kv = _inputs([23, 64, 1], (5, 1), 64, torch.float32, gen)
    cu = torch.arange(4, dtype=torch.int32)
    args = (kv.k_cache, kv.v_cache)
    got = decode_attention(q, *args, kv.seq_lens, kv.block_tables, 0.125, num_splits=3)
    want = prefill_attention(q, *args, cu, kv.seq_lens, kv.block_tables, 0.125)
    assert max_abs_diff(got, want) < 1e-5  # fp32: one split merge apart


def test_zero_length_sequence_gives_zeros(gen):
    """A padding slot of a captured batch (seq_len 0) must not produce NaN or garbage."""
    q, kv = _inputs([10, 1], (4, 2), 64, torch.float32, gen)
    kv.seq_lens[1] = 0
    args = (q, kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, 0.125)
    want = decode_attention_ref(*args)
    assert torch.equal(want[1], torch.zeros_like(want[1]))
    for splits in (1, 2):
        out = decode_attention(*args, num_splits=splits)
        assert torch.equal(out[1], want[1])
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_out_buffer_and_max_seq_len_hint(gen):
    q, kv = _inputs([50, 7], (4, 2), 64, torch.float32, gen)
    out = torch.full_like(q, float("nan"))
    args = (q, kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, 0.125)
    got = decode_attention(*args, out=out, max_seq_len=50)
    assert got is out
    assert max_abs_diff(out, decode_attention_ref(*args)) < 1e-4
