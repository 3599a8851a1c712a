"""The Megatron split: which sizes each released shape accepts (with the numbers when not), which heads a
rank holds, slices that put the full tensors back together, and sharded MLPs whose partial outputs sum to
the full layer's (the all-reduce)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from internvl_serve.decoder.engine.tensor_parallel import TPShard, local_heads, shard_state, tp_problems


def text_config(heads, kv, inter, hidden=None, layers=1):
    hidden = hidden or heads * 8
    return SimpleNamespace(
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        hidden_size=hidden,
        num_hidden_layers=layers,
        hidden_act="silu",
    )


QWEN_14B = text_config(40, 8, 13824, 5120)
QWEN_72B = text_config(64, 8, 29568, 8192)


@pytest.mark.parametrize(
    ("config", "size"), [(QWEN_14B, 2), (QWEN_14B, 4), (QWEN_14B, 8), (QWEN_72B, 8), (QWEN_72B, 16)]
)
def test_released_shapes_split(config, size):
    assert tp_problems(config, size) == []


@pytest.mark.parametrize(
    ("config", "size", "message"),
    [
        (QWEN_14B, 3, "num_attention_heads 40 is not divisible by --tensor-parallel-size 3"),
        (text_config(12, 2, 8960), 8, "num_attention_heads 12 is not divisible by --tensor-parallel-size 8"),
        (text_config(8, 4, 64), 8, None),  # 4 KV heads over 8 ranks: each replicated twice
        (text_config(12, 4, 48), 6, "--tensor-parallel-size 6 is not a multiple of num_key_value_heads 4"),
        (text_config(8, 8, 60), 8, "intermediate_size 60 is not divisible by --tensor-parallel-size 8"),
    ],
)
def test_sizes_that_do_not_divide_are_refused_with_the_numbers(config, size, message):
    problems = tp_problems(config, size)
    assert (message in " ".join(problems)) if message else problems == []


def test_fewer_kv_heads_than_ranks_replicates_each_on_its_ranks():
    config = text_config(8, 2, 64)
    heads = [local_heads(config, TPShard(r, 4)) for r in range(4)]
    assert [(h.num_heads, h.num_kv_heads, h.first_kv_head) for h in heads] == [
        (2, 1, 0),
        (2, 1, 0),
        (2, 1, 1),
        (2, 1, 1),
    ]
    # rank r's q heads [2r, 2r+2) use KV head (2r) // 4 (group of 4 q heads per KV head): the one it holds
    assert all(h.first_kv_head == (2 * r) // 4 for r, h in enumerate(heads))


def test_slices_put_the_full_tensors_back_together():
    config = text_config(4, 2, 16, hidden=8)
    head_dim = 2
    prefix = "model.language_model.layers.0."
    full = {
        prefix + "self_attn.q_proj.weight": torch.randn(4 * head_dim, 8),
        prefix + "self_attn.q_proj.bias": torch.randn(4 * head_dim),
        prefix + "self_attn.k_proj.weight": torch.randn(2 * head_dim, 8),
        prefix + "self_attn.o_proj.weight": torch.randn(8, 4 * head_dim),
        prefix + "mlp.down_proj.weight": torch.randn(8, 16),
        prefix + "input_layernorm.weight": torch.randn(8),
    }
    shards = [shard_state(full, config, TPShard(r, 2)) for r in range(2)]
    for name, dim in [("q_proj.weight", 0), ("q_proj.bias", 0), ("k_proj.weight", 0), ("o_proj.weight", 1)]:
        key = prefix + "self_attn." + name
        assert torch.equal(torch.cat([s[key] for s in shards], dim), full[key])
    key = prefix + "mlp.down_proj.weight"
    assert torch.equal(torch.cat([s[key] for s in shards], 1), full[key])
    assert all(
        torch.equal(s[prefix + "input_layernorm.weight"], full[prefix + "input_layernorm.weight"]) for s in shards
    )


def test_sharded_mlps_sum_to_the_full_layer(monkeypatch):
    from internvl_serve.decoder.engine.qwen2 import MLP

    monkeypatch.setattr(TPShard, "all_reduce", lambda self, x: x)  # the sum is taken below, as the collective would
    config = text_config(4, 2, 32, hidden=16)
    torch.manual_seed(0)
    full = MLP(config, TPShard())
    state = {f"mlp.{k}": v for k, v in full.state_dict().items()}
    x = torch.randn(5, 16)
    total = torch.zeros(5, 16)
    for rank in range(4):
        part = MLP(config, TPShard(rank, 4))
        local = shard_state(state, config, TPShard(rank, 4))
        part.load_state_dict({k.removeprefix("mlp."): v for k, v in local.items()})
        total += part(x)
    assert torch.allclose(total, full(x), atol=1e-6)


def test_step_inputs_cross_the_pipe_as_plain_arrays():
    import pickle

    from internvl_serve.decoder.engine.memory_profile import prefill_step_inputs
    from internvl_serve.decoder.engine.tp_workers import pack_step, unpack_step

    inputs = prefill_step_inputs(num_tokens=40, num_logits=3, block_size=16)
    inputs.media_rows = torch.randn(4, 8).to(torch.bfloat16)
    message = pickle.loads(pickle.dumps(pack_step(inputs)))
    assert not any(isinstance(v, torch.Tensor) for v in message["fields"].values())
    back = unpack_step(message)
    assert torch.equal(back.token_ids, inputs.token_ids) and torch.equal(back.media_rows, inputs.media_rows)
    assert back.media_rows.dtype is torch.bfloat16
    assert torch.equal(back.meta.prefill_block_tables, inputs.meta.prefill_block_tables)
    assert back.meta.num_decode_tokens == 0 and back.meta.cpu_blocks == {}
