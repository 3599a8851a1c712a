"""What the client returns: plain dataclasses built from the response protos."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as enc_pb

_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}
_MEDIA_TYPE = {media_pb2.MEDIA_TYPE_IMAGE: "image", media_pb2.MEDIA_TYPE_VIDEO: "video"}


@dataclass(frozen=True)
class Usage:
    """Token counts of one call (see internvl.v1.Usage)."""

    input_tokens: int = 0
    output_tokens: int = 0
    image_tokens: int = 0
    media_cache_hits: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV the server reused from its prefix cache

    @classmethod
    def from_proto(cls, usage: pb.Usage) -> Usage:
        return cls(
            usage.input_tokens, usage.output_tokens, usage.image_tokens, usage.media_cache_hits, usage.cached_tokens
        )


@dataclass(frozen=True)
class GenerateResult:
    """The whole reply. `finish_reason` is "stop" (end of sequence or a stop string) or "length"."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    usage: Usage
    request_id: str = ""
    model: str = ""

    @classmethod
    def from_proto(cls, r: pb.GenerateResponse) -> GenerateResult:
        return cls(
            r.text, list(r.token_ids), _FINISH.get(r.finish_reason), Usage.from_proto(r.usage), r.request_id, r.model
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StreamDelta:
    """One streamed piece: the new `text` and `token_ids` (either may be empty). `finish_reason` and
    `usage` are None on every delta but the last."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    usage: Usage | None = None
    request_id: str = ""
    model: str = ""

    @classmethod
    def from_proto(cls, r: pb.GenerateStreamResponse) -> StreamDelta:
        last = r.finish_reason != pb.FINISH_REASON_UNSPECIFIED
        return cls(
            r.text,
            list(r.token_ids),
            _FINISH.get(r.finish_reason),
            Usage.from_proto(r.usage) if last else None,
            r.request_id,
            r.model,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EncodedMedia:
    """One encoded item. Reuse it in a later call as {"type": "image", "media_id": e.media_id} (or pass the
    EncodedMedia itself as the media_id) while it is cached: `ttl_seconds` from now; 0 means the server's
    cache was unavailable and the id cannot be reused."""

    media_id: str
    media_type: str  # "image" or "video"
    num_tiles: int
    num_tokens: int
    num_frames: int
    tokens_per_tile: int
    cache_hit: bool
    ttl_seconds: int
    model: str = ""
    embeddings: Any = field(default=None, repr=False, compare=False)  # numpy array when requested

    @property
    def reusable(self) -> bool:
        return self.ttl_seconds > 0

    @classmethod
    def from_proto(cls, e: enc_pb.EncodedMedia, model: str = "") -> EncodedMedia:
        embeddings = tensor_to_numpy(e.embeddings) if e.HasField("embeddings") else None
        return cls(
            e.media_id,
            _MEDIA_TYPE.get(e.media_type, "unspecified"),
            e.num_tiles,
            e.num_tokens,
            e.num_frames,
            e.tokens_per_tile,
            e.cache_hit,
            e.ttl_seconds,
            model,
            embeddings,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "embeddings"}


def tensor_to_numpy(t: media_pb2.Tensor):
    """A Tensor proto as a float32 numpy array (bfloat16 widened exactly; float16 kept as float16)."""
    import numpy as np

    if t.dtype == "bfloat16":
        raw = np.frombuffer(t.data, dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(tuple(t.shape))
    dtype = {"float32": "<f4", "float16": "<f2"}.get(t.dtype)
    if dtype is None:
        raise ValueError(f"unknown tensor dtype {t.dtype!r}")
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))
