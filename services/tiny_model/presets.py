"""Checkpoint shapes per preset.

`tiny` generates in seconds for tests; `bench` is big enough that CPU benchmarks measure real work
(448x448 tiles, 14x14 patches, 256 tokens per tile); `internvl3-1b` / `internvl3-14b` carry the released
models' shapes (InternViT-300M + Qwen2.5-0.5B / Qwen2.5-14B).
"""

from __future__ import annotations

from dataclasses import dataclass

# The released tokenizer's ordinary vocabulary ends at 151642; its special tokens start at 151643.
REAL_BASE_VOCAB = 151643


@dataclass(frozen=True)
class VisionShape:
    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class TextShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float


@dataclass(frozen=True)
class Preset:
    name: str
    vision: VisionShape
    text: TextShape
    base_vocab: int  # ordinary (BPE) tokens before the special tokens
    max_tiles: int
    num_frames: int  # video frames sampled by default
    max_shard_bytes: int  # shard the safetensors above this size, so sharded loading is exercised
    writes_weights: bool  # real-shape presets write weights only when asked
    weight_dtype: str

    @property
    def tokens_per_tile(self) -> int:
        # pixel shuffle with downsample ratio 0.5 keeps a quarter of the patches
        return (self.vision.image_size // self.vision.patch_size) ** 2 // 4


_INTERNVIT_300M = VisionShape(448, 14, 1024, 24, 16, 4096)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        vision=VisionShape(64, 8, 64, 2, 4, 128),
        text=TextShape(64, 2, 4, 2, 128, 4096, 1_000_000.0),
        base_vocab=1024,
        max_tiles=12,
        num_frames=8,
        max_shard_bytes=400_000,
        writes_weights=True,
        weight_dtype="float32",
    ),
    "bench": Preset(
        name="bench",
        vision=VisionShape(448, 14, 256, 4, 4, 1024),
        text=TextShape(640, 8, 10, 2, 1792, 8192, 1_000_000.0),
        base_vocab=4096,
        max_tiles=12,
        num_frames=8,
        max_shard_bytes=50_000_000,
        writes_weights=True,
        weight_dtype="float32",
    ),
    "internvl3-1b": Preset(
        name="internvl3-1b",
        vision=_INTERNVIT_300M,
        text=TextShape(896, 24, 14, 2, 4864, 32768, 1_000_000.0),
        base_vocab=REAL_BASE_VOCAB,
        max_tiles=12,
        num_frames=8,
        max_shard_bytes=5_000_000_000,
        writes_weights=False,
        weight_dtype="bfloat16",
    ),
    "internvl3-14b": Preset(
        name="internvl3-14b",
        vision=_INTERNVIT_300M,
        text=TextShape(5120, 48, 40, 8, 13824, 32768, 1_000_000.0),
        base_vocab=REAL_BASE_VOCAB,
        max_tiles=12,
        num_frames=8,
        max_shard_bytes=5_000_000_000,
        writes_weights=False,
        weight_dtype="bfloat16",
    ),
}
