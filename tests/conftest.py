"""Shared fixtures: tiny checkpoints built once per session (both key layouts) and test media."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports triton (transformers' model code does): kernel tests run on the CPU under the
# Triton interpreter, and triton picks interpreter vs compiler once, at its first import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

# Only tests/ goes on sys.path, never the repository root: the root holds a folder named `kernels`, and
# Hugging Face's `kernels` package has that name (transformers probes for it).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from internvl_serve.tiny_model.writer import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-hub"), "tiny", seed=0, layout="hub")


@pytest.fixture(scope="session")
def tiny_model_legacy_dir(tmp_path_factory) -> Path:
    from internvl_serve.tiny_model.writer import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-legacy"), "tiny", seed=0, layout="legacy")


@pytest.fixture(scope="session")
def oracle(tiny_model_dir):
    from internvl_serve.oracle import Oracle

    return Oracle(tiny_model_dir)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Images and videos on disk, as the model card's examples use (local files instead of urls)."""
    from internvl_serve.oracle.sample import write_card_media

    return write_card_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def model_card_chats(media_dir) -> dict[str, list[dict]]:
    """The model card's kinds of chat (local files instead of urls)."""
    from internvl_serve.oracle.sample import model_card_chats

    return model_card_chats(media_dir)


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server for the session (DEBUG enabled so fault tests can stall it)."""
    from internvl_testing.redis_server import RedisServer

    server = RedisServer("--enable-debug-command", "yes")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def encoder(tiny_model_dir, redis_server):
    """An in-process encoder on a free port over the session's redis-server."""
    from internvl_testing.encoder_server import encoder_config, start_encoder

    thread = start_encoder(encoder_config(tiny_model_dir, redis_server.url))
    yield thread
    thread.close()
