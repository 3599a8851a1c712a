"""What `internvl-serve up` tells the person at the terminal: one line per stage, with elapsed seconds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO


class Progress:
    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def line(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", file=self.out, flush=True)

    def raw(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


def last_event(log_path: Path | None, max_bytes: int = 8192) -> str | None:
    """The `event` of the last structured line of a service log (what it did last), if any."""
    for line in reversed(tail(log_path, 20, max_bytes)):
        try:
            event = json.loads(line).get("event")
        except (ValueError, AttributeError):
            continue
        if event:
            return str(event)
    return None


def tail(log_path: Path | None, lines: int = 20, max_bytes: int = 16384) -> list[str]:
    if log_path is None or not log_path.is_file():
        return []
    with open(log_path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        data = f.read().decode("utf-8", errors="replace")
    return [s for s in data.splitlines() if s.strip()][-lines:]
