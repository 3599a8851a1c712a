"""Media embeddings taken from the transformers oracle instead of the encoder service: what the decoder's
tests and the GPU check (benchmarks/gpu_engine_check.py) feed the engine.

Tile and frame counts come from the checkpoint's own image and video processors, one media item at a time
(as the encoder reports them), not from the oracle's prompt ids, so prompt tests compare two independent
paths. Embeddings are oracle.image_features of the whole chat's pixel_values, split per item.
"""

from __future__ import annotations

from typing import Any

from internvl_serve.oracle.media import collect_media

Chat = list[dict[str, Any]]


def media_parts(chat: Chat) -> list[str]:
    kinds = []
    for message in chat:
        if isinstance(message["content"], list):
            kinds += [p["type"] for p in message["content"] if p["type"] in ("image", "video")]
    return kinds


def tile_counts(oracle, chat: Chat) -> list[int]:
    """Tiles per media part, in chat order (a video: its sampled frames)."""
    images, videos, metadata = collect_media(chat)
    images, videos, metadata = iter(images), iter(videos), iter(metadata)
    counts = []
    for kind in media_parts(chat):
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
    """One MediaEmbedding per media part of the chat, in order, with the oracle's projected features."""
    from internvl_serve.decoder.engine.media import MediaEmbedding  # the oracle itself needs no decoder

    kinds = media_parts(chat)
    if not kinds:
        return []
    counts = tile_counts(oracle, chat)
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
