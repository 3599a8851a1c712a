"""Fixtures for the media fault tests: tiny-checkpoint settings and a video decoder with its test hooks on."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fault_pp(tiny_model_dir):
    from internvl_serve.encoder.media.config import load_preprocess

    return load_preprocess(tiny_model_dir)


@pytest.fixture(scope="session")
def hooked_decoder(fault_pp):
    """Two workers that crash or hang on magic inputs (test hooks are off unless asked for, as here)."""
    from internvl_serve.encoder.media.config import MediaLimits
    from internvl_serve.encoder.media.video import VideoDecoder

    with VideoDecoder(fault_pp[1], MediaLimits(decode_timeout_s=3.0), workers=2, enable_test_hooks=True) as decoder:
        yield decoder
