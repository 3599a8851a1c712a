"""Fixtures for the media pipeline tests: the tiny checkpoint's preprocess settings and a video decoder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def media_pp(tiny_model_dir):
    from internvl_serve.encoder.media.config import load_preprocess

    return load_preprocess(tiny_model_dir)


@pytest.fixture(scope="session")
def video_decoder(media_pp):
    from internvl_serve.encoder.media.config import MediaLimits
    from internvl_serve.encoder.media.video import VideoDecoder

    with VideoDecoder(media_pp[1], MediaLimits(), workers=2) as decoder:
        yield decoder
