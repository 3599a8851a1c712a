"""The model card's chats with media made on the spot (no network) and their media embeddings taken from the
transformers oracle instead of an encoder service, for the device check's part b: the same ones the tests
use (internvl_serve.oracle.sample and .embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from internvl_serve.oracle.embeddings import media_embeddings  # noqa: F401 (part b's import point)
from internvl_serve.oracle.sample import model_card_chats as _chats
from internvl_serve.oracle.sample import write_card_media

Chat = list[dict[str, Any]]


def have_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def model_card_chats(media_dir: Path, with_video: bool = True) -> dict[str, Chat]:
    """The model card's kinds of chat over local files: text only, one image, several images, a video."""
    return _chats(write_card_media(media_dir, with_video), with_video)
