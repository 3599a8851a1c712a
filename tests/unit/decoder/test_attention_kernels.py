"""The metadata the model runner builds is what the Triton kernels accept, and they agree with the
reference path the decoder uses on CPU (kernels under the Triton interpreter here; on CUDA natively).

A mixed step: two decodes, a prefill chunk that continues a cached prefix, and a fresh prompt. The check
runs in a child process with TRITON_INTERPRET=1 from the start: triton fixes interpreter vs compiler when
first imported, and other test modules import it (through transformers) in compiled mode.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from internvl_serve.decoder.engine.attention import paged_attention
from internvl_serve.decoder.engine.block_manager import BlockManager
from internvl_serve.decoder.engine.kv_cache import KVCache, KVCacheSpec
from internvl_serve.decoder.engine.model_runner import ModelRunner
from internvl_serve.decoder.engine.sampling_params import SamplingParams
from internvl_serve.decoder.engine.scheduler import ScheduledChunk
from internvl_serve.decoder.engine.sequence import Sequence

HQ, HKV, D, BS = 4, 2, 16, 4


def _step():
    spec = KVCacheSpec(num_layers=1, num_kv_heads=HKV, head_dim=D, block_size=BS, dtype=torch.float32)
    bm = BlockManager(32, BS)
    seqs = [Sequence(i, "r", list(range(n)), SamplingParams(), 4, frozenset()) for i, n in enumerate([5, 9, 11, 6])]
    chunks = []
    for seq, computed in zip(seqs, [4, 8, 3, 0]):  # two decodes, a continued prefill, a fresh prompt
        seq.num_computed_tokens = computed
        chunks.append(ScheduledChunk(seq, computed, seq.num_tokens - computed))
        bm.grow(seq.seq_id, seq.num_tokens)
    runner = ModelRunner(model=None, kv_cache=KVCache(spec, 32, "cpu"), device=torch.device("cpu"))
    return runner.kv_cache, runner.prepare(chunks, [bm.block_table(s.seq_id) for s in seqs])


def check_triton_path_matches_reference() -> None:
    cache, inputs = _step()
    meta = inputs.meta
    assert meta.num_decode_tokens == 2 and meta.prefill_cu_seqlens.tolist() == [0, 8, 14]
    torch.manual_seed(0)
    # Earlier steps' keys fill every slot; this step's tokens overwrite theirs.
    k_cache, v_cache = (torch.randn_like(t) for t in cache.layers[0])
    total = inputs.token_ids.shape[0]
    q, k, v = torch.randn(total, HQ, D), torch.randn(total, HKV, D), torch.randn(total, HKV, D)
    outs = []
    for use_triton in (False, True):
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append((paged_attention(q, k, v, kc, vc, meta, D**-0.5, use_triton=use_triton), kc, vc))
    (ref, ref_k, ref_v), (tri, tri_k, tri_v) = outs
    assert torch.equal(ref_k, tri_k) and torch.equal(ref_v, tri_v)
    torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)


def test_runner_metadata_drives_the_triton_kernels_like_the_reference():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1"
    check_triton_path_matches_reference()
