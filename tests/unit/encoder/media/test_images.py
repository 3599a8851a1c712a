"""Image decode + tiling give exactly transformers' pixel_values (tolerance 0: torch.equal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from internvl_serve.encoder.media.config import MediaLimits, load_preprocess
from internvl_serve.encoder.media.images import decode_image, image_to_tiles
from internvl_serve.encoder.media.transforms import tile_grid
from internvl_serve.oracle.media import load_image
from internvl_testing.media import edited_checkpoint, image_bytes, image_variants, noise_image

LIMITS = MediaLimits()
VARIANTS = image_variants()


def _reference(image_processor, data: bytes) -> torch.Tensor:
    """The oracle's path: transformers' load_image, then the torchvision image processor."""
    return image_processor(images=[load_image({"image": data})], return_tensors="pt")["pixel_values"]


def _ours(data: bytes, pp) -> torch.Tensor:
    return image_to_tiles(decode_image(data, LIMITS), pp)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_format_matches_transformers(name, oracle, media_pp):
    data = VARIANTS[name]
    ours = _ours(data, media_pp[0])
    assert ours.dtype == torch.float32 and ours.shape == (7, 3, 64, 64)  # 150x90 -> 3x2 grid + thumbnail
    assert torch.equal(ours, _reference(oracle.processor.image_processor, data))


@pytest.mark.parametrize(
    "width,height,tiles",
    [
        (1, 1, 1),
        (64, 64, 1),
        (65, 64, 1),
        (128, 64, 3),
        (1280, 64, 13),
        (64, 1280, 13),
        (300, 200, 7),
        (500, 500, 10),
        (31, 700, 13),
        (200, 130, 7),
    ],
)
def test_aspect_ratios_and_sizes_match_transformers(width, height, tiles, oracle, media_pp):
    data = image_bytes(noise_image(width, height, seed=width * 7 + height), "PNG")
    ours = _ours(data, media_pp[0])
    assert ours.shape[0] == tiles
    assert torch.equal(ours, _reference(oracle.processor.image_processor, data))


def test_chat_with_two_images_matches_the_oracle(oracle, media_pp, media_dir):
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(media_dir / "view.jpg")},
                {"type": "image", "image": str(media_dir / "liberty.jpg")},
                {"type": "text", "text": "Compare the two pictures."},
            ],
        }
    ]
    expected = oracle.prepare(chat).pixel_values
    ours = torch.cat([_ours((media_dir / n).read_bytes(), media_pp[0]) for n in ("view.jpg", "liberty.jpg")])
    assert torch.equal(ours, expected)


# (edit, [(width, height, tiles with the edit, tiles with the checkpoint as made)])
EDITS = {
    "min2_max4": ({"max_patches": 4, "min_patches": 2}, [(64, 64, 5, 1), (300, 100, 4, 13), (1280, 64, 5, 13)]),
    "no_tiling": ({"crop_to_patches": False}, [(300, 100, 1, 13), (64, 64, 1, 1)]),
    "tile_32x48": ({"size": {"height": 32, "width": 48}, "resample": 2}, [(300, 100, 13, 13), (48, 32, 7, 7)]),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_tiling_settings_are_read_from_the_checkpoint(edit, tiny_model_dir, tmp_path, media_pp):
    from transformers import AutoProcessor

    changes, cases = EDITS[edit]
    edited = edited_checkpoint(tiny_model_dir, tmp_path / "edited", "preprocessor_config.json", **changes)
    pp = load_preprocess(edited)[0]
    processor = AutoProcessor.from_pretrained(str(edited), backend="torchvision").image_processor
    for width, height, tiles, default_tiles in cases:
        data = image_bytes(noise_image(width, height, seed=3), "PNG")
        ours = _ours(data, pp)
        assert torch.equal(ours, _reference(processor, data))
        assert (ours.shape[0], _ours(data, media_pp[0]).shape[0]) == (tiles, default_tiles)
        assert ours.shape[-2:] == pp.tile_size


def test_tile_grid_is_transformers_rule():
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    for height in (1, 7, 64, 90, 333, 1000):
        for width in (1, 13, 64, 150, 640, 4000):
            for lo, hi in ((1, 12), (1, 6), (2, 4), (3, 9)):
                assert tile_grid(height, width, 64, 64, lo, hi) == get_optimal_tiled_canvas(
                    (height, width), (64, 64), lo, hi
                )


def test_transparency_is_composited_like_the_processor():
    """A palette/colour-key transparency kept by convert("RGB") turns white, as the processor's convert_to_rgb
    does; without that step the pixels differ, so the parity tests above do check it."""
    for name in ("png_palette_transparency", "png_rgb_colour_key"):
        keyed = np.asarray(decode_image(VARIANTS[name], LIMITS))
        plain = np.asarray(decode_image(VARIANTS[name], LIMITS, do_convert_rgb=False))
        changed = (keyed != plain).any(axis=-1)
        assert changed.any() and (keyed[changed] == 255).all()


def test_first_frame_of_an_animation_and_exif_orientation():
    gif = decode_image(VARIANTS["gif_animated"], LIMITS)
    first = noise_image(150, 90, 1)
    assert gif.mode == "RGB" and gif.size == (150, 90)
    # GIF is palettised, so compare loosely: the first frame is far closer than the second
    diff = [np.abs(np.asarray(gif, np.int16) - np.asarray(noise_image(150, 90, s), np.int16)).mean() for s in (1, 2)]
    assert diff[0] < diff[1] / 2 and first.size == gif.size
    rotated = decode_image(VARIANTS["jpeg_exif_rotated"], LIMITS)
    assert rotated.size == (90, 150)  # orientation 6 applied, as transformers' load_image does
