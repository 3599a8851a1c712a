"""The self-describing, checksummed cache value for one encoded media item (DESIGN.md section 3).

Layout (little-endian):
  magic b"IVLE" | u16 format version | u8 dtype code | u8 media type | u32 num_tiles | u32 num_frames
  | u32 tokens_per_tile | u32 num_tokens | u32 hidden | 16-byte blake2b of the payload | payload
The payload is the row-major [num_tokens, hidden] embedding. Anything that fails a check is a miss.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import torch

MAGIC = b"IVLE"
VERSION = 1
_HEADER = struct.Struct("<4sHBBIIIII16s")
DTYPES = {1: torch.float32, 2: torch.float16, 3: torch.bfloat16}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
MEDIA_IMAGE, MEDIA_VIDEO = 1, 2


class BlobError(ValueError):
    """A cached value that is not a valid blob (wrong magic, version, sizes or checksum)."""


@dataclass(frozen=True)
class EncodedBlob:
    embeddings: torch.Tensor  # [num_tokens, hidden], CPU
    media_type: int
    num_tiles: int
    num_frames: int
    tokens_per_tile: int


def _digest(payload: bytes | memoryview) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Row-major little-endian bytes of a CPU tensor (bf16 viewed as int16 so numpy can export it)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def tensor_from_bytes(data: bytes | memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    raw = torch.frombuffer(bytearray(data), dtype=torch.int16 if dtype == torch.bfloat16 else dtype)
    return raw.view(dtype).reshape(shape) if dtype == torch.bfloat16 else raw.reshape(shape)


def pack(blob: EncodedBlob) -> bytes:
    emb = blob.embeddings
    payload = tensor_bytes(emb)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        DTYPE_CODES[emb.dtype],
        blob.media_type,
        blob.num_tiles,
        blob.num_frames,
        blob.tokens_per_tile,
        emb.shape[0],
        emb.shape[1],
        _digest(payload),
    )
    return header + payload


def unpack(data: bytes) -> EncodedBlob:
    if len(data) < _HEADER.size:
        raise BlobError(f"blob of {len(data)} bytes is shorter than its header")
    magic, version, dtype_code, media_type, tiles, frames, per_tile, tokens, hidden, digest = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise BlobError(f"bad magic/version {magic!r}/{version}")
    dtype = DTYPES.get(dtype_code)
    if dtype is None or media_type not in (MEDIA_IMAGE, MEDIA_VIDEO):
        raise BlobError(f"bad dtype code {dtype_code} or media type {media_type}")
    payload = memoryview(data)[_HEADER.size :]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(payload) != tokens * hidden * itemsize or tokens != tiles * per_tile:
        raise BlobError("payload size does not match the header")
    if _digest(payload) != digest:
        raise BlobError("payload checksum mismatch")
    emb = tensor_from_bytes(payload, dtype, (tokens, hidden))
    return EncodedBlob(emb, media_type, tiles, frames, per_tile)
