"""make-tiny-model writes the -hf on-disk format, deterministically, for every preset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from internvl_serve.cli import main as serve_main
from internvl_serve.tiny_model.presets import PRESETS
from internvl_serve.tiny_model.tokenizer import SPECIAL_TOKENS

HF_FILES = {
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
}


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_cli_writes_every_file_of_the_hf_format(tmp_path):
    assert serve_main(["make-tiny-model", str(tmp_path / "m"), "--preset", "tiny", "--seed", "3"]) == 0
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert HF_FILES <= names
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    assert len(shards) > 1, "the tiny preset must be sharded so sharded loading is exercised"
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    from safetensors import safe_open

    tensor_bytes = 0
    for shard in shards:
        with safe_open(str(tmp_path / "m" / shard), framework="pt") as f:
            for key in f.keys():
                assert index["weight_map"][key] == shard
                t = f.get_tensor(key)
                tensor_bytes += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == tensor_bytes


def test_same_seed_same_bytes_and_other_seed_other_weights(tmp_path, tiny_model_dir):
    from internvl_serve.tiny_model.writer import make_tiny_model

    again = _digests(make_tiny_model(tmp_path / "again", "tiny", seed=0))
    first = _digests(tiny_model_dir)
    assert again == first
    other = _digests(make_tiny_model(tmp_path / "other", "tiny", seed=1))
    shards = [n for n in first if n.endswith(".safetensors")]
    assert all(other[n] != first[n] for n in shards)
    assert other["tokenizer.json"] == first["tokenizer.json"]


def test_config_matches_the_preset_and_tokenizer(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    preset = PRESETS["tiny"]
    assert config.architectures == ["InternVLForConditionalGeneration"]
    assert config.tie_word_embeddings is False and config.text_config.tie_word_embeddings is False
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert config.image_seq_length == preset.tokens_per_tile == 16
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]


def test_tokenizer_carries_the_released_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = PRESETS["tiny"].base_vocab
    for offset, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == base + offset, token
    assert tokenizer.convert_tokens_to_ids("<video>") == base + len(SPECIAL_TOKENS)
    assert (tokenizer.start_image_token, tokenizer.end_image_token) == ("<img>", "</img>")
    assert tokenizer.context_image_token == "<IMG_CONTEXT>" and tokenizer.video_token == "<video>"
    text = "Describe this image: 二匹の猫 🐱 <img></img>"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips any text
    assert tokenizer.convert_tokens_to_ids("<img>") in ids


@pytest.mark.parametrize("preset", ["internvl3-1b", "internvl3-14b"])
def test_real_shape_presets_carry_released_shapes_and_ids(tmp_path, preset):
    from transformers import AutoConfig, AutoProcessor

    out = tmp_path / preset
    assert serve_main(["make-tiny-model", str(out), "--preset", preset]) == 0
    assert not list(out.glob("*.safetensors")), "real-shape presets write weights only on request"
    config = AutoConfig.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    t, v = config.text_config, config.vision_config
    expected = {"internvl3-1b": (896, 24, 14, 2, 4864), "internvl3-14b": (5120, 48, 40, 8, 13824)}[preset]
    assert (
        t.hidden_size,
        t.num_hidden_layers,
        t.num_attention_heads,
        t.num_key_value_heads,
        t.intermediate_size,
    ) == expected
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size) == (1024, 24, [448, 448], [14, 14])
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]) == [
        151643,
        151645,
        151665,
        151666,
        151667,
    ]
    assert config.image_token_id == 151667 and processor.image_seq_length == 256


def test_bench_preset_config_has_benchmark_shapes(tmp_path):
    from transformers import AutoConfig

    from internvl_serve.tiny_model.writer import make_tiny_model

    out = make_tiny_model(tmp_path / "bench", "bench", weights=False)
    config = AutoConfig.from_pretrained(out)
    assert config.vision_config.image_size == [448, 448] and config.image_seq_length == 256
    assert 512 <= config.text_config.hidden_size <= 1024 and config.text_config.num_hidden_layers >= 8
