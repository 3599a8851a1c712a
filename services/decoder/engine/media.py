"""MediaEmbedding: one image or video as the encoder answered it (what replaces its <IMG_CONTEXT> tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from internvl_serve.decoder.engine.block_hash import tensor_digest

MEDIA_TYPES = ("image", "video")


@dataclass(frozen=True)
class MediaEmbedding:
    """The projected embeddings of one media part, in the order the part appears in the chat.

    An image has `num_tiles` tiles (the thumbnail included) and `num_frames` 0; a video has one tile per
    sampled frame (`num_tiles == num_frames`). Rows are tile-major: `embeddings[t * tokens_per_tile + i]`.
    """

    embeddings: torch.Tensor  # [num_tiles * tokens_per_tile, text hidden size]
    media_type: str  # "image" | "video"
    num_tiles: int
    tokens_per_tile: int
    num_frames: int = 0
    cache_hit: bool = False  # came from the encoder's cache (reported in Usage.media_cache_hits)
    # Identifies the content for prefix caching (the encoders' media id); empty: hash the embeddings.
    content_hash: bytes = b""

    def __post_init__(self) -> None:
        if self.media_type not in MEDIA_TYPES:
            raise ValueError(f"media_type must be one of {MEDIA_TYPES}, got {self.media_type!r}")
        if self.num_tiles < 1 or self.tokens_per_tile < 1:
            raise ValueError(f"num_tiles ({self.num_tiles}) and tokens_per_tile ({self.tokens_per_tile}) must be >= 1")
        if self.media_type == "video" and self.num_frames != self.num_tiles:
            raise ValueError(
                f"a video has one tile per frame: num_frames {self.num_frames} != num_tiles {self.num_tiles}"
            )
        if self.media_type == "image" and self.num_frames != 0:
            raise ValueError(f"an image has num_frames 0, got {self.num_frames}")
        if self.embeddings.dim() != 2 or self.embeddings.shape[0] != self.num_tokens:
            raise ValueError(
                f"embeddings must be [num_tiles * tokens_per_tile = {self.num_tokens}, hidden], "
                f"got {tuple(self.embeddings.shape)}"
            )

    @property
    def num_tokens(self) -> int:
        return self.num_tiles * self.tokens_per_tile

    @classmethod
    def image(cls, embeddings: torch.Tensor, num_tiles: int, **kwargs) -> "MediaEmbedding":
        """From [num_tiles, tokens_per_tile, hidden] or [num_tokens, hidden] embeddings."""
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        return cls(flat, "image", num_tiles, flat.shape[0] // num_tiles, **kwargs)

    @classmethod
    def video(cls, embeddings: torch.Tensor, num_frames: int, **kwargs) -> "MediaEmbedding":
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        return cls(flat, "video", num_frames, flat.shape[0] // num_frames, num_frames=num_frames, **kwargs)

    def identity(self) -> bytes:
        """What the KV of this item depends on: its content hash, or a hash of its embeddings."""
        return self.content_hash or tensor_digest(self.embeddings)
