"""Our Qwen2 language model over a flat, variable-length batch, numerically matching transformers.

Parameter names equal transformers' (under `model.language_model.` and `lm_head.`), so checkpoint tensors
map one to one. RMSNorm in fp32 then cast; rotate-half RoPE with fp32 cos/sin at absolute positions;
GQA with q/k/v bias; SwiGLU MLP; attention through the paged-attention kernels (attention.py). With a
TPShard of size N the layers hold rank r's slices and all-reduce after o_proj and down_proj
(tensor_parallel.py); size 1 is the plain model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from internvl_serve.checkpoint import Checkpoint, CheckpointError, assign
from internvl_serve.common.layers import RMSNorm
from internvl_serve.common.quantization import quantize_linears
from internvl_serve.decoder.engine.attention import AttentionMetadata, paged_attention
from internvl_serve.decoder.engine.cpu_linear import use_input_major_linears
from internvl_serve.decoder.engine.tensor_parallel import TensorSlicer, TPShard, local_heads

# RoPE types whose frequencies do not depend on the sequence length up to max_position_embeddings
# ("dynamic" NTK scaling only changes them beyond it, and longer contexts are refused).
_STATIC_ROPE_TYPES = ("default", "dynamic", "linear", "yarn", "llama3")


class RotaryEmbedding(nn.Module):
    """cos/sin [num_tokens, head_dim] in fp32 for absolute positions, as transformers computes them."""

    def __init__(self, text_config):
        super().__init__()
        params = dict(getattr(text_config, "rope_parameters", None) or {})
        rope_type = params.get("rope_type", "default")
        if rope_type not in _STATIC_ROPE_TYPES:
            raise CheckpointError(
                f"text_config rope_type {rope_type!r} is not supported (supported: {_STATIC_ROPE_TYPES})"
            )
        head_dim = _head_dim(text_config)
        if rope_type == "default":
            base = params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0))
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
            scaling = 1.0
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](text_config)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.attention_scaling = float(scaling)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class Attention(nn.Module):
    def __init__(self, config, shard: TPShard):
        super().__init__()
        self.shard = shard
        self.head_dim = _head_dim(config)
        heads = local_heads(config, shard)
        self.num_heads = heads.num_heads
        self.num_kv_heads = heads.num_kv_heads
        self.scale = self.head_dim**-0.5
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x, cos, sin, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = paged_attention(q, k, v, k_cache, v_cache, meta, self.scale)
        return self.shard.all_reduce(self.o_proj(out.reshape(n, self.num_heads * self.head_dim)))


class MLP(nn.Module):
    def __init__(self, config, shard: TPShard):
        super().__init__()
        self.shard = shard
        inter = config.intermediate_size // shard.size
        self.gate_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shard.all_reduce(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config, shard: TPShard):
        super().__init__()
        self.self_attn = Attention(config, shard)
        self.mlp = MLP(config, shard)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    """transformers' Qwen2Model: the module under `model.language_model.`."""

    def __init__(self, config, shard: TPShard):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, shard) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Qwen2ForCausalLM(nn.Module):
    """Embeddings in, logits of the sampled positions out; the KV cache lives outside (kv_cache.py)."""

    def __init__(self, text_config, shard: TPShard | None = None):
        super().__init__()
        _check_supported(text_config)
        self.config = text_config
        self.shard = shard or TPShard()
        self.num_local_kv_heads = local_heads(text_config, self.shard).num_kv_heads  # this rank's KV cache
        self.language_model = TextModel(text_config, self.shard)
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(text_config)

    @property
    def max_position_embeddings(self) -> int:
        return self.config.max_position_embeddings

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed_tokens(token_ids)

    @torch.inference_mode()
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """inputs_embeds [T, hidden], positions int64 [T] -> fp32 logits [len(logits_indices), vocab]."""
        cos, sin = self.rotary(positions, inputs_embeds.dtype)
        x = inputs_embeds
        for layer, (k_cache, v_cache) in zip(self.language_model.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, k_cache, v_cache, meta)
        x = self.language_model.norm(x[logits_indices])
        return self.lm_head(x).float()

    @classmethod
    def from_state(
        cls,
        config,
        state: dict[str, torch.Tensor],
        dtype=torch.float32,
        device="cpu",
        quant=None,
        shard=None,
    ) -> "Qwen2ForCausalLM":
        """`config` is the InternVLConfig; `state` holds canonical names (Checkpoint.load("language")).
        `quant`: QuantSettings; when enabled, every Linear but lm_head is quantized (as transformers does).
        `shard`: this rank's TPShard; `state` then holds its slices (TensorSlicer, shard_state)."""
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
        shard = shard or TPShard()
        with torch.device("meta"):
            model = cls(text_config, shard)
        model.to_empty(device=device)
        model.rotary = RotaryEmbedding(text_config).to(device)  # buffers are computed, not loaded
        assign(model.language_model, state, "model.language_model.")
        if "lm_head.weight" in state:
            assign(model.lm_head, state, "lm_head.")
        else:  # tied: transformers built no separate lm_head parameter, so the checkpoint has none
            model.lm_head.weight = model.language_model.embed_tokens.weight
        model = model.to(dtype).eval()
        if quant is not None and quant.enabled:
            quantize_linears(model, quant, skip=(model.lm_head,))
        elif torch.device(device).type == "cpu":
            # Small-batch GEMMs are far faster with [in, out] weights on the CPU (cpu_linear.py); a tied
            # lm_head keeps sharing the embedding table instead of taking a transposed copy.
            tied = model.lm_head.weight is model.language_model.embed_tokens.weight
            use_input_major_linears(model, skip=(model.lm_head,) if tied else ())
        return model

    @classmethod
    def from_checkpoint(
        cls, ckpt: Checkpoint, dtype=torch.float32, device="cpu", quant=None, shard=None
    ) -> "Qwen2ForCausalLM":
        """Load only the language model and lm_head tensors of a checkpoint (this rank's slices of them)."""
        shard = shard or TPShard()
        if not shard.parallel:
            state, _ = ckpt.load("language", dtype=dtype, device=device)
        else:  # sliced as read: host memory holds one full tensor at a time, not the whole model
            slicer = TensorSlicer(ckpt.config.get_text_config(), shard)
            state, _ = ckpt.load("language", dtype=dtype, device="cpu", transform=slicer)
        return cls.from_state(ckpt.config, state, dtype, device, quant, shard)


def _check_supported(config) -> None:
    if getattr(config, "use_sliding_window", False) and "sliding_attention" in (
        getattr(config, "layer_types", None) or []
    ):
        raise CheckpointError("text_config uses sliding-window attention, which this decoder does not implement")
    if config.num_attention_heads % config.num_key_value_heads:
        raise CheckpointError(
            f"num_attention_heads {config.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {config.num_key_value_heads}"
        )
