"""Preprocess settings read from the checkpoint, media limits, and the fingerprints used in cache keys.

Every value that shapes `pixel_values` comes from the checkpoint's processor files, never from constants
(448 px tiles and 12 tiles are only the released models' values). Two layouts exist:

- released (transformers 4.5x): `preprocessor_config.json`, `video_preprocessor_config.json`,
  `processor_config.json` (with `image_seq_length`);
- transformers 5.x `save_pretrained`: `processor_config.json` with nested `image_processor` and
  `video_processor` dicts.

Precedence is transformers' own: the nested dict wins, then the standalone file; the video settings fall
back to `preprocessor_config.json` when there is no video file. A key missing everywhere takes the default
of transformers' class (GotOcr2ImageProcessor / InternVLVideoProcessor), so both read the same checkpoint alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from internvl_serve.checkpoint.errors import CheckpointError
from internvl_serve.common.config_fields import setting

MiB = 1024 * 1024
# transformers' class defaults (OPENAI_CLIP_MEAN/STD, PILImageResampling.BICUBIC), used only for absent keys.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BICUBIC = 3
_DEFAULT_SIZE = 384
_DEFAULT_TOKENS_PER_TILE = 256  # InternVLProcessor's default image_seq_length
_DEFAULT_NUM_FRAMES = 8  # only when the checkpoint names none; transformers would then keep every frame
# Bump when the pixel pipeline changes in a way the settings do not show, so old cache entries miss.
PIPELINE_VERSION = 1


def _digest(kind: str, fields: dict[str, Any]) -> str:
    payload = json.dumps({"kind": kind, "pipeline": PIPELINE_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ImagePreprocess:
    """GotOcr2ImageProcessor's settings: dynamic tiling (crop_to_patches) then resize, rescale, normalize."""

    tile_height: int
    tile_width: int
    min_tiles: int
    max_tiles: int
    crop_to_patches: bool  # tiling on: a grid of tiles plus a thumbnail when more than one tile
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float
    resample: int  # PIL resampling code, mapped to torchvision's interpolation as transformers does
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True
    use_thumbnail: bool = True  # GotOcr2 always adds it (when more than one tile)

    @property
    def tile_size(self) -> tuple[int, int]:
        return self.tile_height, self.tile_width

    def fingerprint(self) -> str:
        """Short hex digest of every setting that changes the tiles (goes into the cache key)."""
        return _digest("image", asdict(self))


@dataclass(frozen=True)
class VideoPreprocess:
    """InternVLVideoProcessor's settings: uniform frame sampling, then per-frame resize, rescale, normalize."""

    frame_height: int
    frame_width: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float
    resample: int
    num_frames: int  # default frames per video; a request may ask for another count
    initial_shift: bool | float = True  # True: sample from the middle of each 1/n segment
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.frame_height, self.frame_width

    def fingerprint(self, num_frames: int | None = None) -> str:
        """Digest of the settings; the default frame count is left out (it is per request): pass the count
        a request uses to get a digest that covers it too."""
        fields = {k: v for k, v in asdict(self).items() if k != "num_frames"}
        if num_frames is not None:
            fields["requested_num_frames"] = int(num_frames)
        return _digest("video", fields)


@dataclass(frozen=True)
class MediaLimits:
    """What the service accepts; sizes over a byte limit are RESOURCE_EXHAUSTED, the rest INVALID_ARGUMENT."""

    max_image_bytes: int = setting(32 * MiB, "largest accepted image file, in MiB", flag="--max-image-mb", scale=MiB)
    max_video_bytes: int = setting(256 * MiB, "largest accepted video file, in MiB", flag="--max-video-mb", scale=MiB)
    max_image_pixels: int = setting(64_000_000, "decompression-bomb guard, checked from the header before decoding")
    max_image_side: int = setting(32_768, "longest accepted image side in pixels")
    min_image_side: int = 1
    max_num_frames: int = setting(32, "most frames one request may sample from a video")
    max_video_frames: int = 100_000  # frames in the whole file
    max_video_seconds: float = 3 * 3600.0
    max_video_pixels_per_frame: int = 8192 * 8192
    decode_timeout_s: float = setting(60.0, "a slower video decode is killed", flag="--video-decode-timeout-s")
    # RLIMIT_AS of each video worker process: a hostile video fails alone instead of exhausting the host.
    video_worker_memory_bytes: int = setting(
        2048 * MiB,
        "address-space limit of each video worker process, in MiB (a video needing more is rejected)",
        flag="--video-worker-memory-mb",
        scale=MiB,
    )

    def problems(self) -> list[str]:
        named = {
            "--max-image-mb": self.max_image_bytes,
            "--max-video-mb": self.max_video_bytes,
            "--max-image-pixels": self.max_image_pixels,
            "--max-image-side": self.max_image_side,
            "--max-num-frames": self.max_num_frames,
            "--video-decode-timeout-s": self.decode_timeout_s,
            "--video-worker-memory-mb": self.video_worker_memory_bytes,
        }
        return [f"{flag} must be > 0, got {value}" for flag, value in named.items() if value <= 0]

    def video_worker_limits(self) -> dict[str, Any]:
        """The part of the limits the video worker process enforces (sent with each request)."""
        return {
            "max_video_frames": self.max_video_frames,
            "max_video_seconds": self.max_video_seconds,
            "max_video_pixels_per_frame": self.max_video_pixels_per_frame,
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore the file from the checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _section(model_dir: Path, nested_key: str, files: list[str]) -> dict[str, Any] | None:
    processor = _read_json(model_dir / "processor_config.json") or {}
    if isinstance(processor.get(nested_key), dict):
        return processor[nested_key]
    for name in files:
        data = _read_json(model_dir / name)
        if data is not None:
            return data
    return None


def _size(cfg: dict[str, Any], where: str) -> tuple[int, int]:
    size = cfg.get("size", _DEFAULT_SIZE)
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
        return size["height"], size["width"]
    raise CheckpointError(f"{where}: size {size!r} is not supported; InternVL needs {{'height': H, 'width': W}}")


def _triple(value: Any, default: tuple[float, ...]) -> tuple[float, ...]:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)


def _reject_unsupported(cfg: dict[str, Any], where: str) -> None:
    for key in ("do_center_crop", "do_pad"):
        if cfg.get(key):
            raise CheckpointError(f"{where}: {key}=true is not supported by the encoder service")


def _image_preprocess(cfg: dict[str, Any]) -> ImagePreprocess:
    where = "image processor config"
    _reject_unsupported(cfg, where)
    height, width = _size(cfg, where)
    pp = ImagePreprocess(
        tile_height=height,
        tile_width=width,
        min_tiles=int(cfg.get("min_patches", 1)),
        max_tiles=int(cfg.get("max_patches", 12)),
        crop_to_patches=bool(cfg.get("crop_to_patches", False)),
        image_mean=_triple(cfg.get("image_mean"), _CLIP_MEAN),
        image_std=_triple(cfg.get("image_std"), _CLIP_STD),
        rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
        resample=int(cfg.get("resample", _BICUBIC)),
        do_resize=bool(cfg.get("do_resize", True)),
        do_rescale=bool(cfg.get("do_rescale", True)),
        do_normalize=bool(cfg.get("do_normalize", True)),
        do_convert_rgb=bool(cfg.get("do_convert_rgb", True)),
    )
    if not 1 <= pp.min_tiles <= pp.max_tiles:
        raise CheckpointError(f"{where}: min_patches={pp.min_tiles}, max_patches={pp.max_tiles} is not a valid range")
    return pp


def _video_preprocess(cfg: dict[str, Any]) -> VideoPreprocess:
    where = "video processor config"
    _reject_unsupported(cfg, where)
    height, width = _size(cfg, where)
    shift = cfg.get("initial_shift", True)
    return VideoPreprocess(
        frame_height=height,
        frame_width=width,
        image_mean=_triple(cfg.get("image_mean"), _CLIP_MEAN),
        image_std=_triple(cfg.get("image_std"), _CLIP_STD),
        rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
        resample=int(cfg.get("resample", _BICUBIC)),
        num_frames=int(cfg.get("num_frames") or _DEFAULT_NUM_FRAMES),
        initial_shift=shift if isinstance(shift, bool) else float(shift),
        do_resize=bool(cfg.get("do_resize", True)),
        do_rescale=bool(cfg.get("do_rescale", True)),
        do_normalize=bool(cfg.get("do_normalize", True)),
        do_convert_rgb=bool(cfg.get("do_convert_rgb", True)),
    )


def load_preprocess(model_dir: str | Path) -> tuple[ImagePreprocess, VideoPreprocess, int]:
    """(image settings, video settings, tokens per tile) of a checkpoint directory, in either file layout."""
    model_dir = Path(model_dir)
    image_cfg = _section(model_dir, "image_processor", ["preprocessor_config.json"])
    if image_cfg is None:
        raise CheckpointError(
            f"{model_dir} has no image processor settings: expected preprocessor_config.json or an "
            "'image_processor' entry in processor_config.json"
        )
    video_cfg = _section(model_dir, "video_processor", ["video_preprocessor_config.json", "preprocessor_config.json"])
    processor = _read_json(model_dir / "processor_config.json") or {}
    tokens_per_tile = int(processor.get("image_seq_length", _DEFAULT_TOKENS_PER_TILE))
    return _image_preprocess(image_cfg), _video_preprocess(video_cfg or {}), tokens_per_tile
