"""The model card's chats with media made on the spot (no network), and their media embeddings taken from
the transformers oracle instead of an encoder service: what tests/conftest.py (model_card_chats),
tests/internvl_testing/media.py and oracle_media.py do for the tests, for the device check's part b
(benchmarks/ does not import tests/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

Chat = list[dict[str, Any]]
IMAGES = {"view": (200, 120, 1), "liberty": (90, 300, 2), "bridge": (64, 64, 3)}  # (width, height, seed)


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """Random pixels plus a gradient, so neighbouring tiles differ and resizing matters."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    return Image.fromarray(((base.astype(np.float32) + ramp) / 2).astype(np.uint8), "RGB")


def write_video(path: Path, frames: int = 20, width: int = 96, height: int = 64, seed: int = 7) -> Path:
    """An H.264 MP4 whose frames all differ (noise + a moving bar); needs PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.asarray(noise_image(width, height, seed * 1000 + i)).copy()
            rgb[:, (i * 5) % width : (i * 5) % width + 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def have_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _user(*parts) -> Chat:
    return [{"role": "user", "content": list(parts)}]


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def model_card_chats(media_dir: Path, with_video: bool = True) -> dict[str, Chat]:
    """The model card's kinds of chat over local files: text only, one image, several images, a video."""
    media_dir.mkdir(parents=True, exist_ok=True)
    for name, (w, h, seed) in IMAGES.items():
        noise_image(w, h, seed).save(media_dir / f"{name}.jpg", quality=92)
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
        write_video(media_dir / "tennis.mp4")
        chats["video"] = _user(
            {"type": "video", "video": str(media_dir / "tennis.mp4")}, _text("What type of shot is the man performing?")
        )
    return chats


def _media_kinds(chat: Chat) -> list[str]:
    return [p["type"] for m in chat if isinstance(m["content"], list) for p in m["content"] if p["type"] != "text"]


def _tile_counts(oracle, chat: Chat) -> list[int]:
    """Tiles per media part from the checkpoint's own processors, one item at a time (as the encoder
    reports them); a video: its sampled frames."""
    from internvl_serve.oracle.media import collect_media

    images, videos, metadata = (iter(x) for x in collect_media(chat))
    counts = []
    for kind in _media_kinds(chat):
        if kind == "image":
            out = oracle.processor.image_processor(images=[next(images)], crop_to_patches=True, return_tensors="pt")
            counts.append(int(out["num_patches"][0]))
        else:
            out = oracle.processor.video_processor(
                videos=[next(videos)], video_metadata=[next(metadata)], return_tensors="pt"
            )
            counts.append(int(out["pixel_values_videos"].shape[1]))
    return counts


def media_embeddings(oracle, chat: Chat) -> list:
    """One MediaEmbedding per media part, in order: the oracle's projected features, split per item."""
    from internvl_serve.decoder.engine import MediaEmbedding

    kinds = _media_kinds(chat)
    if not kinds:
        return []
    counts = _tile_counts(oracle, chat)
    pixel_values = oracle.prepare(chat).pixel_values
    if pixel_values.shape[0] != sum(counts):
        raise RuntimeError(f"the processor made {pixel_values.shape[0]} tiles, the items count {counts}")
    features = oracle.image_features(pixel_values)  # [tiles, tokens_per_tile, hidden]
    items, start = [], 0
    for kind, n in zip(kinds, counts):
        piece = features[start : start + n]
        start += n
        items.append(MediaEmbedding.image(piece, n) if kind == "image" else MediaEmbedding.video(piece, n))
    return items
