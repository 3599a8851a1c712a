"""The wrappers refuse bad arguments with a ValueError before anything is launched."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from internvl_serve.kernels import (
    DecodeWorkspace,
    PrefillConfig,
    decode_attention,
    prefill_attention,
    write_kv_cache,
)
from internvl_testing.paged_testing import build_paged_kv, packed_queries


@pytest.fixture
def batch(gen):
    kv = build_paged_kv([20, 5], 2, 64, torch.float32, generator=gen)
    q, cu = packed_queries([4, 5], 4, 64, torch.float32, generator=gen)
    return q, kv, cu


def _prefill(query, kv, cu, **changes):
    args = dict(
        q=query,
        k_cache=kv.k_cache,
        v_cache=kv.v_cache,
        cu_seqlens_q=cu,
        seq_lens=kv.seq_lens,
        block_tables=kv.block_tables,
        scale=0.125,
    )
    args.update(changes)
    return prefill_attention(**args)


def test_cpu_tensors_without_the_interpreter_are_refused(batch, monkeypatch):
    q, kv, cu = batch
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"CUDA tensors .*\*_ref"):
        _prefill(q, kv, cu)
    with pytest.raises(ValueError, match="CUDA tensors"):
        decode_attention(q[:2], kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, 0.125)
    with pytest.raises(ValueError, match="CUDA tensors"):
        write_kv_cache(q[:1, :2], q[:1, :2], kv.k_cache, kv.v_cache, torch.zeros(1, dtype=torch.int64))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q, kv, cu: {"block_tables": kv.block_tables.long()}, "block_tables has dtype"),
        (lambda q, kv, cu: {"seq_lens": kv.seq_lens.long()}, "seq_lens has dtype"),
        (lambda q, kv, cu: {"cu_seqlens_q": cu[:-1]}, r"cu_seqlens_q must be \[3\]"),
        (lambda q, kv, cu: {"block_tables": kv.block_tables[:1]}, "expected num_seqs=2"),
        (lambda q, kv, cu: {"q": q.half()}, "differ in dtype"),
        (lambda q, kv, cu: {"q": q[:, :3]}, "not a multiple of num_kv_heads"),
        (lambda q, kv, cu: {"q": q[..., :32]}, "head_dim 32 != cache head_dim 64"),
        (lambda q, kv, cu: {"q": q.transpose(0, 2).contiguous().transpose(0, 2)}, "stride 1 in its last"),
        (lambda q, kv, cu: {"q": q[0]}, "must be \\[total_q, num_q_heads, head_dim\\]"),
        (lambda q, kv, cu: {"v_cache": kv.v_cache[:-1]}, "differ in shape"),
        (
            lambda q, kv, cu: {"k_cache": kv.k_cache.double(), "v_cache": kv.v_cache.double(), "q": q.double()},
            "k_cache has dtype torch.float64",
        ),
        (lambda q, kv, cu: {"scale": 0.0}, "scale must be positive"),
        (lambda q, kv, cu: {"seq_lens": kv.seq_lens.to("meta")}, "is on meta"),
    ],
)
def test_prefill_argument_errors(batch, change, message):
    q, kv, cu = batch
    with pytest.raises(ValueError, match=message):
        _prefill(q, kv, cu, **change(q, kv, cu))


def test_head_dim_must_be_a_power_of_two(gen):
    kv = build_paged_kv([3], 1, 48, torch.float32, generator=gen)
    q, cu = packed_queries([3], 1, 48, torch.float32, generator=gen)
    with pytest.raises(ValueError, match="head_dim must be a power of two"):
        _prefill(q, kv, cu)


def test_prefill_config_must_fit_the_group(batch):
    q, kv, cu = batch
    with pytest.raises(ValueError, match="block_m >= the GQA group"):
        _prefill(q, kv, cu, config=PrefillConfig(block_m=16, block_n=24, num_warps=4, num_stages=1))


def test_out_must_match_q(batch):
    q, kv, cu = batch
    with pytest.raises(ValueError, match="out must match q"):
        _prefill(q, kv, cu, out=torch.empty_like(q).half())


def test_decode_workspace_limits(batch):
    q, kv, _ = batch
    args = (q[:2], kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, 0.125)
    small = DecodeWorkspace.allocate(1, 4, 64, 4, device="cpu")
    with pytest.raises(ValueError, match="exceed the workspace's max_num_seqs 1"):
        decode_attention(*args, workspace=small)
    other_heads = DecodeWorkspace.allocate(2, 8, 64, 4, device="cpu")
    with pytest.raises(ValueError, match="workspace is for 8 heads"):
        decode_attention(*args, workspace=other_heads)
    ok = DecodeWorkspace.allocate(2, 4, 64, 4, device="cpu")
    with pytest.raises(ValueError, match=r"num_splits must be in \[1, 4\]"):
        decode_attention(*args, workspace=ok, num_splits=5)
    with pytest.raises(ValueError, match="num_splits must be"):
        decode_attention(*args, num_splits=0)


def test_write_kv_cache_errors(batch):
    _, kv, _ = batch
    k = torch.zeros(3, 2, 64)
    with pytest.raises(ValueError, match="slot_mapping has dtype"):
        write_kv_cache(k, k, kv.k_cache, kv.v_cache, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"slot_mapping must be \[3\]"):
        write_kv_cache(k, k, kv.k_cache, kv.v_cache, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="must have the cache dtype"):
        write_kv_cache(k.half(), k.half(), kv.k_cache, kv.v_cache, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"must be \[num_tokens, 2, 64\]"):
        write_kv_cache(k[:, :1], k[:, :1], kv.k_cache, kv.v_cache, torch.zeros(3, dtype=torch.int64))


def test_importing_the_package_does_not_import_triton():
    """Triton fixes interpreter vs compiler at its first import; the reference path must not trigger it."""
    code = "import sys, internvl_serve.kernels; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
