"""Load the media of Hugging Face chat messages the way the oracle feeds them to transformers.

transformers 5.23 decodes video *paths* only with torchcodec, so videos are decoded here with PyAV and
passed to the processor as frames plus metadata.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _source(part: dict[str, Any], kind: str) -> Any:
    for key in (kind, "url", "path"):
        if part.get(key) is not None:
            return part[key]
    raise ValueError(f"{kind} part has none of the keys {kind!r}, 'url', 'path': {sorted(part)}")


def load_image(part: dict[str, Any]) -> Image.Image:
    from transformers.image_utils import load_image as hf_load_image

    src = _source(part, "image")
    if isinstance(src, (bytes, bytearray)):
        src = Image.open(io.BytesIO(src))
    elif isinstance(src, Path):
        src = str(src)
    return hf_load_image(src)


def decode_video(src: str | Path | bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """Every frame as RGB uint8 [T, H, W, 3] plus the metadata the video processor samples from."""
    import av

    data = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)
    with av.open(data) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("video has no decodable frames")
    video = np.stack(frames)
    total = len(frames)
    metadata = {
        "total_num_frames": total,
        "fps": fps,
        "duration": total / fps if fps else 0.0,
        "height": video.shape[1],
        "width": video.shape[2],
        "video_backend": "pyav",
    }
    return video, metadata


def collect_media(messages: list[dict[str, Any]]) -> tuple[list[Image.Image], list[np.ndarray], list[dict]]:
    """Images, videos and video metadata of one conversation, in message order."""
    images, videos, metadata = [], [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            continue
        for part in content:
            if part["type"] == "image":
                images.append(load_image(part))
            elif part["type"] == "video":
                frames, meta = decode_video(_source(part, "video"))
                videos.append(frames)
                metadata.append(meta)
    return images, videos, metadata
