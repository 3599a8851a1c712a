"""Our Qwen2 pieces against transformers' on the same config: RoPE (the checkpoints' dynamic type) and
the checkpoint loader path (only language tensors, tied or untied head)."""

from __future__ import annotations

import torch

from internvl_serve.checkpoint import open_checkpoint
from internvl_serve.decoder.engine.qwen2 import Qwen2ForCausalLM, RotaryEmbedding


def test_rope_matches_transformers_for_the_checkpoint_config(tiny_model_dir):
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    text_config = open_checkpoint(tiny_model_dir).config.get_text_config()
    assert text_config.rope_parameters["rope_type"] == "dynamic"  # as the released InternVL3 configs
    positions = torch.tensor([0, 1, 5, 100, 4095])
    cos, sin = RotaryEmbedding(text_config)(positions, torch.float32)
    ref_cos, ref_sin = Qwen2RotaryEmbedding(text_config)(torch.zeros(1), positions[None])
    assert torch.equal(cos, ref_cos[0]) and torch.equal(sin, ref_sin[0])


def test_loads_only_the_language_model_and_an_untied_head(tiny_model_dir):
    ckpt = open_checkpoint(tiny_model_dir)
    state, report = ckpt.load("language")
    assert all(k.startswith(("model.language_model.", "lm_head.")) for k in state)
    model = Qwen2ForCausalLM.from_state(ckpt.config, state)
    assert torch.equal(model.lm_head.weight_t.t(), state["lm_head.weight"])  # stored input-major on the CPU
    assert model.lm_head.weight_t.data_ptr() != model.language_model.embed_tokens.weight.data_ptr()


def test_tied_head_shares_the_embedding(tiny_model_dir):
    ckpt = open_checkpoint(tiny_model_dir)
    state, _ = ckpt.load("language")
    del state["lm_head.weight"]  # what the loader yields for a tied checkpoint
    model = Qwen2ForCausalLM.from_state(ckpt.config, state)
    assert model.lm_head.weight is model.language_model.embed_tokens.weight
