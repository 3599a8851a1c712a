"""Framed messages over a pipe between the server and a video worker process (stdlib only).

A message is `<u32 header length><u64 payload length>`, a JSON header, then raw payload bytes (the video
file one way, sampled RGB frames the other). Reads and writes take an optional deadline so the server side
can give up on a worker that hangs; the worker side blocks (deadline None).
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Sequence
from typing import Any

_PREFIX = struct.Struct("<IQ")
MAX_HEADER_BYTES = 1 << 20


class WireTimeout(Exception):
    """The deadline passed before the message was complete."""


class WireClosed(Exception):
    """The other end went away (EOF or broken pipe)."""


def _wait(fd: int, deadline: float | None, *, write: bool) -> None:
    if deadline is None:
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise WireTimeout
    ready = select.select([], [fd], [], remaining) if write else select.select([fd], [], [], remaining)
    if not (ready[1] if write else ready[0]):
        raise WireTimeout


def _write_all(fd: int, data: memoryview, deadline: float | None) -> None:
    pos = 0
    while pos < len(data):
        _wait(fd, deadline, write=True)
        try:
            pos += os.write(fd, data[pos : pos + (1 << 20)])
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            raise WireClosed from None


def _read_exact(fd: int, size: int, deadline: float | None) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        _wait(fd, deadline, write=False)
        try:
            got = os.readv(fd, [view[pos:]])
        except BlockingIOError:
            continue
        except ConnectionResetError:
            raise WireClosed from None
        if got == 0:
            raise WireClosed
        pos += got
    return buf


def send(
    fd: int,
    header: dict[str, Any],
    payload: Sequence[bytes | bytearray | memoryview] = (),
    *,
    deadline: float | None = None,
) -> None:
    """Write one message; `payload` parts are sent back to back without being joined."""
    head = json.dumps(header).encode()
    parts = [memoryview(p).cast("B") for p in payload]
    _write_all(fd, memoryview(_PREFIX.pack(len(head), sum(len(p) for p in parts)) + head), deadline)
    for part in parts:
        _write_all(fd, part, deadline)


def receive(fd: int, *, deadline: float | None = None, max_payload: int) -> tuple[dict[str, Any], bytearray]:
    """Read one message: (header, payload). A header or payload over its bound closes the exchange."""
    head_len, payload_len = _PREFIX.unpack(bytes(_read_exact(fd, _PREFIX.size, deadline)))
    if head_len > MAX_HEADER_BYTES or payload_len > max_payload:
        raise WireClosed(f"message of {head_len}+{payload_len} bytes is over the bound")
    header = json.loads(bytes(_read_exact(fd, head_len, deadline)))
    if not isinstance(header, dict):
        raise WireClosed("message header is not an object")
    return header, _read_exact(fd, payload_len, deadline)
