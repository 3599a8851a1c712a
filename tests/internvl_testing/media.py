"""Test media made on the fly: images in every format the encoder accepts and small encoded videos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Random pixels plus a gradient, so neighbouring tiles differ and resizing matters."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = ((base.astype(np.float32) + ramp) / 2).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def image_bytes(image: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def write_video(
    path: Path, *, frames: int = 20, width: int = 96, height: int = 64, codec: str = "libx264", fps: int = 10, seed: int = 0
) -> Path:
    """An encoded video whose frames are all different (noise + a moving bar)."""
    import av

    pix_fmt = "yuv420p"
    with av.open(str(path), "w") as container:
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
