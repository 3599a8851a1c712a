"""Write a whole checkpoint directory in the on-disk format of the OpenGVLab InternVL3 `-hf` releases."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from internvl_serve.tiny_model.presets import PRESETS, Preset
from internvl_serve.tiny_model.tokenizer import build_tokenizer
from internvl_serve.tiny_model.weights import write_weights

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_BICUBIC = 3


class ShapeOnlyTokenizer:
    """What build_config reads of a tokenizer, for a config of shapes only (benchmarks that build a model on
    the meta device): the vocabulary size; the special ids are stand-ins."""

    context_image_token_id = 1

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def convert_tokens_to_ids(self, token: str) -> int:
        return 2


def build_config(preset: Preset, tokenizer):
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    v, t = preset.vision, preset.text
    vision = InternVLVisionConfig(
        hidden_size=v.hidden_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        intermediate_size=v.intermediate_size,
        image_size=[v.image_size, v.image_size],
        patch_size=[v.patch_size, v.patch_size],
        attention_bias=True,
        use_qk_norm=False,
        norm_type="layer_norm",
        layer_norm_eps=1e-6,
        layer_scale_init_value=0.1,
        use_mean_pooling=True,
        use_absolute_position_embeddings=True,
        hidden_act="gelu",
    )
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        max_window_layers=t.num_layers,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        # The released configs carry dynamic NTK scaling; it equals plain RoPE up to max_position_embeddings.
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": t.rope_theta},
        use_sliding_window=False,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=eos,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=preset.tokens_per_tile,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,  # InternVLConfig defaults to True at the top level
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    config.dtype = preset.weight_dtype
    return config


def _processor_files(preset: Preset) -> dict[str, dict]:
    """The three processor files of the released checkpoints (transformers 4.5x layout)."""
    size = {"height": preset.vision.image_size, "width": preset.vision.image_size}
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "processor_class": "InternVLProcessor",
        "resample": _BICUBIC,
        "rescale_factor": 1 / 255,
        "size": size,
    }
    image = {
        **common,
        "crop_to_patches": True,
        "image_processor_type": "GotOcr2ImageProcessorFast",
        "max_patches": preset.max_tiles,
        "min_patches": 1,
    }
    video = {
        **common,
        "do_sample_frames": True,
        "initial_shift": True,
        "num_frames": preset.num_frames,
        "video_processor_type": "InternVLVideoProcessor",
    }
    processor = {"image_seq_length": preset.tokens_per_tile, "processor_class": "InternVLProcessor"}
    return {
        "preprocessor_config.json": image,
        "video_preprocessor_config.json": video,
        "processor_config.json": processor,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_tiny_model(
    out_dir: str | Path,
    preset: str = "tiny",
    *,
    seed: int = 0,
    weights: bool | None = None,
    layout: str = "hub",
    device: str = "cpu",
) -> Path:
    """Write a random-weight checkpoint; same preset and seed give the same bytes.

    `weights=None` follows the preset (real-shape presets write config and tokenizer only).
    """
    spec = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.base_vocab, spec.text.max_position_embeddings)
    tokenizer.save_pretrained(out)
    config = build_config(spec, tokenizer)
    config.save_pretrained(out)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": eos[1], "eos_token_id": eos, "pad_token_id": eos[1], "do_sample": False},
    )
    for name, data in _processor_files(spec).items():
        _write_json(out / name, data)
    if weights if weights is not None else spec.writes_weights:
        dtype = getattr(torch, spec.weight_dtype)
        write_weights(
            out, config, seed=seed, dtype=dtype, max_shard_bytes=spec.max_shard_bytes, layout=layout, device=device
        )
    return out
