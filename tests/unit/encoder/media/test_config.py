"""load_preprocess reads the checkpoint (both file layouts), and the fingerprints track every setting."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from internvl_serve.checkpoint.errors import CheckpointError
from internvl_serve.encoder.media.config import ImagePreprocess, VideoPreprocess, load_preprocess


def _write(path, name, data):
    (path / name).write_text(json.dumps(data))


def test_released_layout_matches_what_transformers_reads(tiny_model_dir, oracle):
    image, video, tokens_per_tile = load_preprocess(tiny_model_dir)
    ip, vp = oracle.processor.image_processor, oracle.processor.video_processor
    assert image.tile_size == (ip.size.height, ip.size.width) == (64, 64)
    assert (image.min_tiles, image.max_tiles, image.crop_to_patches) == (ip.min_patches, ip.max_patches, True)
    assert image.image_mean == tuple(ip.image_mean) and image.image_std == tuple(ip.image_std)
    assert (image.resample, image.rescale_factor) == (ip.resample, ip.rescale_factor)
    assert video.frame_size == (vp.size.height, vp.size.width)
    assert (video.num_frames, video.initial_shift) == (vp.num_frames, vp.initial_shift)
    assert tokens_per_tile == oracle.processor.image_seq_length == 16


def test_save_pretrained_layout_reads_the_same(tiny_model_dir, oracle, tmp_path):
    oracle.processor.save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()  # transformers 5.x nests everything
    assert "image_processor" in json.loads((tmp_path / "processor_config.json").read_text())
    assert load_preprocess(tmp_path) == load_preprocess(tiny_model_dir)


def test_nested_settings_win_over_the_standalone_file(tiny_model_dir, tmp_path):
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    image_cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    _write(
        tmp_path, "processor_config.json", {"image_seq_length": 7, "image_processor": {**image_cfg, "max_patches": 5}}
    )
    image, _, tokens_per_tile = load_preprocess(tmp_path)
    assert (image.max_tiles, tokens_per_tile) == (5, 7)


def test_values_come_from_the_files_not_constants(tmp_path):
    size = {"height": 448, "width": 448}
    _write(
        tmp_path,
        "preprocessor_config.json",
        {
            "size": size,
            "crop_to_patches": True,
            "max_patches": 6,
            "min_patches": 2,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.25, 0.25, 0.25],
            "resample": 2,
        },
    )
    _write(
        tmp_path,
        "video_preprocessor_config.json",
        {"size": {"height": 32, "width": 48}, "num_frames": 5, "initial_shift": 0},
    )
    _write(tmp_path, "processor_config.json", {"image_seq_length": 256})
    image, video, tokens_per_tile = load_preprocess(tmp_path)
    assert (image.tile_size, image.min_tiles, image.max_tiles, image.resample) == ((448, 448), 2, 6, 2)
    assert image.image_mean == (0.5,) * 3 and image.image_std == (0.25,) * 3
    assert (video.frame_size, video.num_frames, video.initial_shift) == ((32, 48), 5, 0.0)
    assert tokens_per_tile == 256


def test_video_settings_fall_back_to_the_image_file(tmp_path):
    _write(tmp_path, "preprocessor_config.json", {"size": {"height": 96, "width": 96}, "num_frames": 6})
    _, video, _ = load_preprocess(tmp_path)
    assert (video.frame_size, video.num_frames) == ((96, 96), 6)


def test_bad_or_missing_settings_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no image processor settings"):
        load_preprocess(tmp_path)
    _write(tmp_path, "preprocessor_config.json", {"size": {"shortest_edge": 224}})
    with pytest.raises(CheckpointError, match="size"):
        load_preprocess(tmp_path)
    _write(tmp_path, "preprocessor_config.json", {"min_patches": 4, "max_patches": 2})
    with pytest.raises(CheckpointError, match="min_patches"):
        load_preprocess(tmp_path)


@pytest.mark.parametrize(
    "change",
    [
        {"tile_height": 32},
        {"max_tiles": 6},
        {"min_tiles": 2},
        {"crop_to_patches": False},
        {"use_thumbnail": False},
        {"image_mean": (0.5, 0.5, 0.5)},
        {"image_std": (0.2, 0.2, 0.2)},
        {"resample": 2},
        {"rescale_factor": 1 / 127.5},
    ],
)
def test_image_fingerprint_covers_every_setting(tiny_model_dir, change):
    image, _, _ = load_preprocess(tiny_model_dir)
    assert image.fingerprint() == load_preprocess(tiny_model_dir)[0].fingerprint()  # stable
    assert len(image.fingerprint()) == 16 and int(image.fingerprint(), 16) >= 0
    assert dataclasses.replace(image, **change).fingerprint() != image.fingerprint()


def test_video_fingerprint_leaves_the_default_frame_count_out_unless_asked(tiny_model_dir):
    _, video, _ = load_preprocess(tiny_model_dir)
    other_default = dataclasses.replace(video, num_frames=video.num_frames + 1)
    assert other_default.fingerprint() == video.fingerprint()
    assert video.fingerprint(4) != video.fingerprint(8) != video.fingerprint()
    assert dataclasses.replace(video, frame_width=32).fingerprint() != video.fingerprint()
    assert dataclasses.replace(video, initial_shift=0.0).fingerprint(8) != video.fingerprint(8)


def test_settings_are_frozen(tiny_model_dir):
    image, video, _ = load_preprocess(tiny_model_dir)
    assert isinstance(image, ImagePreprocess) and isinstance(video, VideoPreprocess)
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.max_tiles = 3  # type: ignore[misc]
