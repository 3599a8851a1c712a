"""Our Qwen2 at the real Qwen2.5-14B layer shapes with fewer layers and random weights made on the device,
the StepInputs of a pure decode step and of a prefill, and the bytes and FLOPs they cost (parts c and d).

Only the layer count is cut (the decode and prefill costs are per layer, plus lm_head), so ms per step,
GB/s and TFLOP/s are those of the 14B model's layers; the figures name the layer count they ran with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from internvl_serve.tiny_model.presets import PRESETS


def _shape(text, vocab_size: int) -> dict:
    """A preset's language-model shape as Qwen2Config fields (TextShape has no vocabulary)."""
    return dict(
        hidden_size=text.hidden_size,
        num_attention_heads=text.num_heads,
        num_key_value_heads=text.num_kv_heads,
        intermediate_size=text.intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=1e-6,
    )


# Qwen2.5-14B (InternVL3-14B's language model) and its vocabulary; the CPU smoke run's toy sizes.
QWEN25_14B = _shape(PRESETS["internvl3-14b"].text, 152_064)
TOY = _shape(PRESETS["tiny"].text, 256)
BLOCK_SIZE = 16


def text_config(shape: dict, num_layers: int):
    """A transformers Qwen2Config (what Qwen2ForCausalLM takes as text_config)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        **shape,
        num_hidden_layers=num_layers,
        max_window_layers=num_layers,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        use_sliding_window=False,
        sliding_window=None,
        tie_word_embeddings=False,
    )


@dataclass(frozen=True)
class Shape:
    """The numbers the byte and FLOP counts need (from a text config)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, cfg) -> "Shape":
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            head_dim,
            cfg.intermediate_size,
            cfg.vocab_size,
        )

    @property
    def layer_matmul_params(self) -> int:
        """Weights one token multiplies in a decoder layer: q, k, v, o and the three MLP projections."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate

    @property
    def layer_params(self) -> int:
        """Every parameter of a layer: the matmul weights, q/k/v biases and the two RMSNorm weights."""
        return self.layer_matmul_params + (self.heads + 2 * self.kv_heads) * self.head_dim + 2 * self.hidden

    def weight_bytes_read(self, itemsize: int) -> int:
        """Weights a decode step reads: every layer, the final norm and lm_head (the embedding table is
        only indexed: a few rows, not counted)."""
        return (self.layers * self.layer_params + self.hidden + self.vocab * self.hidden) * itemsize

    def kv_bytes_per_token(self, itemsize: int) -> int:
        """K and V of one token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * itemsize

    def decode_bytes(self, batch: int, context: int, itemsize: int) -> int:
        """Bytes one decode step must read at least: the weights once, and every sequence's K/V."""
        return self.weight_bytes_read(itemsize) + batch * context * self.kv_bytes_per_token(itemsize)

    def attention_flops(self, lengths: list[int]) -> float:
        """Causal attention of fresh prompts: QK^T and PV, 2 FLOPs per multiply-add, each query over the
        keys it sees (i + 1 for query i): 4 * Hq * D * n(n+1)/2 per layer."""
        pairs = sum(n * (n + 1) // 2 for n in lengths)
        return 4.0 * self.heads * self.head_dim * pairs * self.layers

    def prefill_flops(self, lengths: list[int], num_logits: int) -> float:
        """2 * matmul params * tokens (every layer), lm_head on the sampled rows, plus attention."""
        tokens = sum(lengths)
        matmul = 2.0 * self.layers * self.layer_matmul_params * tokens
        return matmul + 2.0 * self.hidden * self.vocab * num_logits + self.attention_flops(lengths)


def build_model(cfg, device: str, dtype: torch.dtype, seed: int = 0):
    """Qwen2ForCausalLM on the meta device, made real on `device` and filled with random weights, as
    Qwen2ForCausalLM.from_state builds it (to_empty, the rotary buffers recomputed, then the dtype)."""
    from gpu_part import init_random_

    from internvl_serve.decoder.engine.qwen2 import Qwen2ForCausalLM, RotaryEmbedding

    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    model.to_empty(device=device)
    model.rotary = RotaryEmbedding(cfg).to(device)
    init_random_(model, seed=seed)
    return model.to(dtype).eval()


def kv_cache_for(cfg, num_blocks: int, device: str, dtype: torch.dtype, fill_seed: int | None = 0):
    """A KVCache over the model's layers; filled with random values (not zeros) so attention does real work
    and a comparison between two paths means something."""
    from internvl_serve.decoder.engine.kv_cache import KVCache, KVCacheSpec

    spec = KVCacheSpec.for_model(cfg, BLOCK_SIZE, dtype)
    cache = KVCache(spec, num_blocks, device)
    if fill_seed is not None:
        gen = torch.Generator(device=device).manual_seed(fill_seed)
        with torch.no_grad():
            for k, v in cache.layers:
                k.normal_(generator=gen)
                v.normal_(generator=gen)
    return cache


def _no_decode():
    return dict(
        num_decode_tokens=0,
        decode_seq_lens=torch.zeros(0, dtype=torch.int32),
        decode_block_tables=torch.zeros((0, 1), dtype=torch.int32),
        decode_max_seq_len=0,
    )


def decode_step_inputs(
    batch: int,
    context: int,
    vocab: int,
    *,
    blocks_per_seq: int | None = None,
    first_block: int = 0,
    token_ids: torch.Tensor | None = None,
    max_seq_len: int | None = None,
    seed: int = 0,
):
    """A pure decode step of `batch` sequences that each hold `context` tokens, this step's included (its
    token sits at position context - 1). Sequence i owns blocks first_block + i * blocks_per_seq onward.
    Host tensors, as ModelRunner.prepare makes them. `max_seq_len`: the decode kernel's host-side bound
    (default: context; a CUDA graph captures with its own, larger one)."""
    from internvl_serve.decoder.engine.attention import AttentionMetadata
    from internvl_serve.decoder.engine.model_runner import StepInputs

    bps = blocks_per_seq or -(-context // BLOCK_SIZE)
    if bps * BLOCK_SIZE < context:
        raise ValueError(f"{bps} blocks of {BLOCK_SIZE} cannot hold {context} tokens")
    tables = (first_block + torch.arange(batch * bps, dtype=torch.int32)).view(batch, bps)
    pos = context - 1
    slots = tables[:, pos // BLOCK_SIZE].long() * BLOCK_SIZE + pos % BLOCK_SIZE
    if token_ids is None:
        token_ids = torch.randint(vocab, (batch,), generator=torch.Generator().manual_seed(seed))
    meta = AttentionMetadata(
        slot_mapping=slots,
        num_decode_tokens=batch,
        decode_seq_lens=torch.full((batch,), context, dtype=torch.int32),
        decode_block_tables=tables,
        decode_max_seq_len=max_seq_len or context,
        prefill_cu_seqlens=torch.zeros(1, dtype=torch.int32),
        prefill_seq_lens=torch.zeros(0, dtype=torch.int32),
        prefill_block_tables=torch.zeros((0, 1), dtype=torch.int32),
    )
    return StepInputs(
        token_ids=token_ids.to(torch.int64),
        positions=torch.full((batch,), pos, dtype=torch.int64),
        media_index=torch.zeros(0, dtype=torch.int64),
        media_rows=None,
        logits_indices=torch.arange(batch, dtype=torch.int64),
        meta=meta,
    )


def prefill_step_inputs(
    lengths: list[int],
    vocab: int,
    *,
    blocks_per_seq: int | None = None,
    first_block: int = 0,
    token_ids: list[torch.Tensor] | None = None,
    seed: int = 0,
):
    """One step prefilling fresh prompts of `lengths` tokens (positions 0..n-1), sequence j in blocks
    first_block + j * blocks_per_seq onward; the last token of each is sampled."""
    from internvl_serve.decoder.engine.attention import AttentionMetadata
    from internvl_serve.decoder.engine.model_runner import StepInputs

    bps = blocks_per_seq or -(-max(lengths) // BLOCK_SIZE)
    if bps * BLOCK_SIZE < max(lengths):
        raise ValueError(f"{bps} blocks of {BLOCK_SIZE} cannot hold {max(lengths)} tokens")
    gen = torch.Generator().manual_seed(seed)
    ids = token_ids or [torch.randint(vocab, (n,), generator=gen) for n in lengths]
    tables = (first_block + torch.arange(len(lengths) * bps, dtype=torch.int32)).view(len(lengths), bps)
    slots, positions = [], []
    for j, n in enumerate(lengths):
        pos = torch.arange(n)
        positions.append(pos)
        slots.append(tables[j, pos // BLOCK_SIZE].long() * BLOCK_SIZE + pos % BLOCK_SIZE)
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(torch.int32)
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots),
        **_no_decode(),
        prefill_cu_seqlens=cu,
        prefill_seq_lens=torch.tensor(lengths, dtype=torch.int32),
        prefill_block_tables=tables,
    )
    return StepInputs(
        token_ids=torch.cat(ids).to(torch.int64),
        positions=torch.cat(positions).to(torch.int64),
        media_index=torch.zeros(0, dtype=torch.int64),
        media_rows=None,
        logits_indices=(cu[1:] - 1).to(torch.int64),
        meta=meta,
    )


def copy_gbps(cuda: bool, nbytes: int) -> float:
    """Device-to-device copy bandwidth, measured as benchmarks/gpu_check.py does (its Timer: a CUDA graph
    of one copy, L2 flushed, median); on the CPU one timed copy (a code check, not a figure)."""
    from gpu_check import Timer, copy_bandwidth

    return copy_bandwidth(Timer(cuda), torch.device("cuda" if cuda else "cpu"), nbytes)
