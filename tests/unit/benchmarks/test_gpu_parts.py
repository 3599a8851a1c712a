"""The device check's arithmetic and builders, on the CPU: peaks, rooflines, byte and FLOP counts (against
parameter counts of the real modules on the meta device), the decode and prefill StepInputs (their logits
agree through our ModelRunner's CPU attention path), and the summaries the driver writes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check_all import kernels_summary, quant_summary, summary_table  # noqa: E402
from gpu_engine_check import agreement  # noqa: E402
from gpu_model import (  # noqa: E402
    QWEN25_14B,
    TOY,
    Shape,
    build_model,
    decode_step_inputs,
    kv_cache_for,
    prefill_step_inputs,
    text_config,
)
from gpu_part import flops_ms, init_random_, peak_bf16_tflops, roofline_ms  # noqa: E402
from gpu_vision import preset_config, tile_flops  # noqa: E402


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_peak_by_device_name(name, peak):
    assert peak_bf16_tflops(name) == peak


def test_rooflines():
    assert roofline_ms(3e9, 3000.0) == pytest.approx(1.0)
    assert flops_ms(989e12, 989.0) == pytest.approx(1000.0)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_14b_byte_and_flop_counts_match_the_model():
    from internvl_serve.decoder.engine.qwen2 import Qwen2ForCausalLM

    cfg = text_config(QWEN25_14B, 4)
    shape = Shape.of(cfg)
    assert (shape.hidden, shape.heads, shape.kv_heads, shape.head_dim) == (5120, 40, 8, 128)
    assert (shape.intermediate, shape.vocab, shape.layers) == (13824, 152064, 4)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    layer = model.language_model.layers[0]
    assert shape.layer_params == _params(layer)
    assert shape.layer_matmul_params == sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    embed = model.language_model.embed_tokens.weight.numel()
    assert shape.weight_bytes_read(2) == (_params(model) - embed) * 2  # all but the embedding table
    # 64 sequences of 4k at 4 layers: 4 GiB of K/V, as the KV cache of part c is sized
    assert shape.decode_bytes(64, 4096, 2) - shape.weight_bytes_read(2) == 4 << 30
    n = 2048
    attention = 4 * 40 * 128 * n * (n + 1) // 2 * 4
    assert shape.attention_flops([n]) == attention
    assert shape.prefill_flops([n], 1) == 2 * 4 * shape.layer_matmul_params * n + 2 * 5120 * 152064 + attention
    assert shape.prefill_flops([n, n], 2) == 2 * shape.prefill_flops([n], 1)


def test_vision_tile_flops_are_about_twice_the_parameters_per_token():
    from internvl_serve.encoder.vision_model import VisionTowerWithProjector

    config = preset_config("internvl3-14b")
    vc = config.vision_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.image_size, vc.patch_size) == (1024, 24, [448, 448], [14, 14])
    assert config.text_config.hidden_size == 5120
    with torch.device("meta"):
        model = VisionTowerWithProjector(config)
    tower = _params(model.vision_tower.encoder)
    attention = 4 * 1025**2 * 1024 * 24
    # the layers' matmuls see 1025 tokens; biases and norms make the parameter count slightly larger
    assert 0.99 < (tile_flops(config) - attention) / (2 * tower * 1025) < 1.05


def test_init_random_gives_norms_one_biases_zero_weights_small():
    torch.manual_seed(0)
    model = build_model(text_config(TOY, 1), "cpu", torch.float32)
    layer = model.language_model.layers[0]
    assert torch.equal(layer.input_layernorm.weight, torch.ones(64))
    assert torch.equal(layer.self_attn.q_proj.bias, torch.zeros(64))
    assert 0.015 < layer.mlp.up_proj.weight.std().item() < 0.025
    init_random_(layer, seed=1)
    assert torch.equal(layer.post_attention_layernorm.weight, torch.ones(64))


def test_decode_inputs_layout():
    inputs = decode_step_inputs(3, 40, 256, blocks_per_seq=4, first_block=5)
    meta = inputs.meta
    assert inputs.token_ids.dtype == inputs.positions.dtype == torch.int64
    assert inputs.positions.tolist() == [39] * 3 and inputs.logits_indices.tolist() == [0, 1, 2]
    assert meta.decode_seq_lens.tolist() == [40] * 3 and meta.decode_seq_lens.dtype == torch.int32
    assert meta.decode_block_tables.tolist() == [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    assert meta.slot_mapping.tolist() == [7 * 16 + 7, 11 * 16 + 7, 15 * 16 + 7]  # position 39: block 2, offset 7
    assert (meta.num_decode_tokens, meta.decode_max_seq_len) == (3, 40)
    assert meta.prefill_cu_seqlens.tolist() == [0] and meta.prefill_block_tables.shape == (0, 1)
    with pytest.raises(ValueError):
        decode_step_inputs(1, 40, 256, blocks_per_seq=2)


def test_decode_step_logits_equal_the_prefill_of_the_same_tokens():
    """Prefill L-1 tokens of each sequence into its blocks, decode token L with the decode builder: its
    logits must be those of prefilling all L tokens at once (ModelRunner on the CPU attention path)."""
    from internvl_serve.decoder.engine.model_runner import ModelRunner

    torch.manual_seed(0)
    cfg = text_config(TOY, 2)
    model = build_model(cfg, "cpu", torch.float32)
    batch, length, bps = 3, 37, 3
    runner = ModelRunner(model, kv_cache_for(cfg, 2 * batch * bps, "cpu", torch.float32, fill_seed=None), "cpu")
    tokens = [torch.randint(TOY["vocab_size"], (length,)) for _ in range(batch)]
    whole = runner.execute(
        prefill_step_inputs([length] * batch, 256, blocks_per_seq=bps, first_block=batch * bps, token_ids=tokens)
    )
    runner.execute(
        prefill_step_inputs([length - 1] * batch, 256, blocks_per_seq=bps, token_ids=[t[:-1] for t in tokens])
    )
    step = decode_step_inputs(batch, length, 256, blocks_per_seq=bps, token_ids=torch.stack([t[-1] for t in tokens]))
    logits = runner.execute(step)
    assert logits.shape == (batch, 256) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, whole, rtol=1e-4, atol=1e-4)


def test_prefill_inputs_layout():
    inputs = prefill_step_inputs([5, 20], 256, blocks_per_seq=2)
    meta = inputs.meta
    assert meta.prefill_cu_seqlens.tolist() == [0, 5, 25] and meta.prefill_seq_lens.tolist() == [5, 20]
    assert inputs.logits_indices.tolist() == [4, 24] and inputs.positions[5:].tolist() == list(range(20))
    assert meta.prefill_block_tables.tolist() == [[0, 1], [2, 3]] and meta.num_decode_tokens == 0
    assert meta.slot_mapping[5:].tolist() == [2 * 16 + i for i in range(16)] + [3 * 16 + i for i in range(4)]


def test_agreement():
    assert agreement([1, 2, 3], [1, 2, 3]) == {"share_identical": 1.0, "first_divergence": None}
    assert agreement([1, 2, 3, 4], [1, 9, 3, 4]) == {"share_identical": 0.75, "first_divergence": 1}
    assert agreement([1, 2], [1, 2, 3, 4]) == {"share_identical": 0.5, "first_divergence": 2}


def test_driver_summaries(tmp_path):
    res = {
        "device": "NVIDIA H100 80GB HBM3",
        "correctness": [{"ok": True}, {"ok": True}],
        "copy_gbps": 3000.0,
        "prefill": [{"ratio": 0.8}, {"ratio": 1.2}, {"ratio": 1.0}],
        "decode": [{"ours_vs_copy": 0.7}],
        "skipped": [],
    }
    row = kernels_summary(res, 0)
    assert row["status"] == "ok" and row["figures"]["prefill_ratio_median"] == 1.0
    assert (
        row["headline"]
        == "correctness 2/2 (native); copy 3000 GB/s; prefill median 1.00 x SDPA; decode median 0.70 of copy"
    )
    assert kernels_summary({**res, "correctness": [{"ok": False}]}, 1)["status"] == "FAILED"
    cpu = kernels_summary(
        {"device": "cpu (Triton interpreter)", "correctness": [{"ok": True}], "skipped": ["timing: no CUDA device"]}, 0
    )
    assert cpu["headline"] == "correctness 1/1 (Triton interpreter); timing skipped: no CUDA"
    said = ["", "4-bit check skipped: bitsandbytes is not installed on this machine"]
    assert quant_summary(tmp_path / "none.json", 0, said)["status"] == "skipped"
    assert quant_summary(tmp_path / "none.json", 1, said)["status"] == "FAILED"
    table = summary_table(["a"], {"a": {"title": "kernels", "status": "ok", "seconds": 12.3, "headline": "x | y"}})
    assert table.splitlines()[-1] == "| a. kernels | ok | 12 | x / y |"
