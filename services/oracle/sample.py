"""Deterministic stand-ins for the model card's media (nothing is downloaded): its example photo, noise
images and videos whose tiles and frames all differ, and the card's kinds of chat over them (the tests and
the GPU check use the same ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def sample_image(width: int = 640, height: int = 480) -> Image.Image:
    """A sky-to-grass gradient with two pink ovals ("two cats on a pink blanket", roughly)."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    top, bottom = np.array([120, 170, 230]), np.array([90, 160, 70])
    pixels = (top * (1 - y) + bottom * y).repeat(width, axis=1).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((80, 260, 300, 420), fill=(230, 150, 180))
    draw.ellipse((340, 250, 580, 430), fill=(220, 140, 170))
    return image


def noise_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Random pixels plus a gradient, so neighbouring tiles differ and resizing matters."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = ((base.astype(np.float32) + ramp) / 2).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def write_video(
    path: Path,
    *,
    frames: int = 20,
    width: int = 96,
    height: int = 64,
    codec: str = "libx264",
    fps: int = 10,
    seed: int = 0,
    pix_fmt: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """An encoded video whose frames are all different (noise + a moving bar); the container follows the
    file suffix (.mp4, .mkv, .webm, .avi)."""
    import av

    pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")  # FFmpeg's mjpeg wants full-range
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            rgb = np.asarray(noise_image(width, height, seed * 1000 + i))
            rgb = rgb.copy()
            rgb[:, (i * 5) % width : (i * 5) % width + 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


CARD_IMAGES = {"view": (200, 120, 1), "liberty": (90, 300, 2), "bridge": (64, 64, 3)}  # (width, height, seed)


def _user(*parts) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def _text(t: str) -> dict[str, str]:
    return {"type": "text", "text": t}


def write_card_media(media_dir: Path, with_video: bool = True) -> Path:
    """The card's three photos (view, liberty, bridge) as JPEGs and its tennis clip as an MP4 (PyAV)."""
    media_dir.mkdir(parents=True, exist_ok=True)
    for name, (w, h, seed) in CARD_IMAGES.items():
        noise_image(w, h, seed).save(media_dir / f"{name}.jpg", quality=92)
    if with_video:
        write_video(media_dir / "tennis.mp4", frames=20, seed=7)
    return media_dir


def model_card_chats(media_dir: Path, with_video: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The model card's kinds of chat over the files write_card_media made: text only, one image, several
    images and (with_video) a video."""
    chats = {
        "text only": _user(_text("Write a haiku")),
        "one image": _user(
            {"type": "image", "image": str(media_dir / "view.jpg")}, _text("Write a haiku for this image")
        ),
        "several images": _user(
            {"type": "image", "image": str(media_dir / "liberty.jpg")},
            {"type": "image", "image": str(media_dir / "bridge.jpg")},
            _text("These images depict two different landmarks. Can you identify them?"),
        ),
    }
    if with_video:
        chats["video"] = _user(
            {"type": "video", "video": str(media_dir / "tennis.mp4")}, _text("What type of shot is the man performing?")
        )
    return chats
