"""Constants and chat builders shared by the decoder engine tests."""

from __future__ import annotations

MAX_NEW = 12  # short generations keep the suite fast; long enough for answers to differ


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def text(t):
    return {"type": "text", "text": t}
