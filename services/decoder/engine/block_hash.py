"""Content hashes of full KV blocks, for prefix caching (DESIGN.md section 9).

A block's hash chains its parent's hash, its token ids and, for every media item whose embeddings fill
some of its positions, the item's content hash and which of its rows they are, so two images behind the
same placeholder tokens never share KV. BLAKE2b over a canonical byte encoding (little-endian int64s,
tagged fields): collision-safe and stable across processes, unlike Python's hash().
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Sequence

import torch

DIGEST_BYTES = 32
_ROOT = b"internvl-serve/kv-block/v1"


def hash_block(
    parent: bytes | None, token_ids: Sequence[int], media: Sequence[tuple[bytes, int, int]], salt: bytes = b""
) -> bytes:
    """`media`: (item content hash, first row of the item in this block, rows in this block), in order.
    `salt` (the first block only; the rest chain it): who may share these blocks, e.g. a tenant, so one
    tenant's prompts never hit, nor reveal through cached_tokens, another's cached KV."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    if parent is not None:
        h.update(parent)
    else:
        h.update(_ROOT)
        if salt:
            h.update(b"S" + struct.pack("<Q", len(salt)) + salt)
    h.update(struct.pack(f"<Q{len(token_ids)}q", len(token_ids), *token_ids))
    for item_hash, first_row, num_rows in media:
        h.update(b"M" + struct.pack("<Q", len(item_hash)) + item_hash + struct.pack("<qq", first_row, num_rows))
    return h.digest()


def tensor_digest(t: torch.Tensor) -> bytes:
    """A content hash of a tensor's values (dtype and shape included)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    flat = t.detach().contiguous().cpu().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.digest()


class MediaLayout:
    """Which media item each embedding row belongs to: rows are in prompt order, item after item."""

    def __init__(self, positions: list[int], items: list[tuple[bytes, int]]):
        """`positions`: the prompt positions of the media rows (ascending); `items`: (content hash, rows)."""
        self.positions = positions
        self.hashes = [h for h, _ in items]
        self.starts = []  # first row of each item
        row = 0
        for _, n in items:
            self.starts.append(row)
            row += n
        if row != len(positions):
            raise ValueError(f"the media items have {row} rows, the prompt {len(positions)} media positions")

    def segments(self, start: int, end: int) -> list[tuple[bytes, int, int]]:
        """(item hash, first row within the item, rows) for the media rows at positions [start, end)."""
        lo = bisect.bisect_left(self.positions, start)
        hi = bisect.bisect_left(self.positions, end)
        out = []
        row = lo
        while row < hi:
            item = bisect.bisect_right(self.starts, row) - 1
            item_end = self.starts[item + 1] if item + 1 < len(self.starts) else len(self.positions)
            take = min(hi, item_end) - row
            out.append((self.hashes[item], row - self.starts[item], take))
            row += take
        return out
