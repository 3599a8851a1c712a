"""Bad images become InvalidMedia (or ResourceExhausted for size) with a message a person can act on."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from internvl_serve.common.errors import InvalidMedia, ResourceExhausted
from internvl_serve.encoder.media.config import MediaLimits
from internvl_serve.encoder.media.images import decode_image
from internvl_testing.media import image_bytes, noise_image, png_header

LIMITS = MediaLimits()


def _rejected(data: bytes, limits: MediaLimits = LIMITS, exc: type[Exception] = InvalidMedia) -> str:
    with pytest.raises(exc) as info:
        decode_image(data, limits)
    message = str(info.value)
    assert message and "Traceback" not in message and "\n" not in message
    return message


def test_empty_and_non_image_bytes():
    assert "empty" in _rejected(b"")
    assert "not an image" in _rejected(b"hello, this is text and not a picture" * 10)
    assert "not an image" in _rejected(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_files_are_detected(fmt):
    data = image_bytes(noise_image(200, 150, 4), fmt)
    message = _rejected(data[: len(data) // 2])
    assert "truncated or corrupt" in message or "corrupt" in message


def test_corrupt_png_data():
    data = bytearray(image_bytes(noise_image(120, 80, 5), "PNG"))
    data[200:260] = bytes(60)  # inside IDAT: the CRC and the zlib stream no longer check out
    assert "corrupt" in _rejected(bytes(data))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "width,height,expect",
    [
        (30000, 30000, "too large to decode safely"),  # Pillow's own bomb error, from the header
        (10000, 10000, "100 megapixels; the limit is 64 megapixels"),  # our check, right after the header
        (9000, 8000, "72 megapixels; the limit is 64 megapixels"),  # under Pillow's guard, over ours
        (40000, 1, "longest side may be at most 32768"),
    ],
)
def test_decompression_bombs_and_absurd_sizes_are_refused_from_the_header(width, height, expect):
    assert expect in _rejected(png_header(width, height))


def test_size_limits_are_configurable():
    small = MediaLimits(max_image_pixels=10_000, max_image_side=150, min_image_side=20)
    assert "120x100 = 12000 pixels; the limit is 10000 pixels" in _rejected(
        image_bytes(noise_image(120, 100, 1), "PNG"), small
    )
    assert "longest side may be at most 150" in _rejected(image_bytes(noise_image(160, 30, 1), "PNG"), small)
    assert "at least 20 pixel(s)" in _rejected(image_bytes(noise_image(90, 10, 1), "PNG"), small)
    decode_image(image_bytes(noise_image(100, 100, 1), "PNG"), small)  # exactly at the limit: fine


def test_zero_sized_image_header():
    _rejected(png_header(0, 10))


def test_over_the_byte_limit_is_resource_exhausted():
    data = image_bytes(noise_image(64, 64, 1), "PNG")
    message = _rejected(data, MediaLimits(max_image_bytes=len(data) - 1), ResourceExhausted)
    assert f"{len(data)} bytes" in message and "limit" in message


def _pdf() -> bytes:
    buf = io.BytesIO()
    noise_image(32, 32, 1).save(buf, format="PDF")
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize(
    "name,data",
    [
        ("pdf", _pdf()),
        ("eps", EPS),
        ("ico", image_bytes(noise_image(32, 32, 1), "ICO")),
        ("psd", b"8BPS\x00\x01" + bytes(20)),
        ("tga", image_bytes(noise_image(32, 32, 1), "TGA")),
        ("ppm", image_bytes(noise_image(32, 32, 1), "PPM")),
    ],
)
def test_formats_outside_the_list_are_never_opened(name, data, monkeypatch):
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript must never run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    assert "not an image this service reads" in _rejected(data)
    assert "JPEG, PNG, WebP, GIF, BMP or TIFF" in _rejected(data)


def test_a_good_image_still_decodes_after_the_bad_ones():
    image = decode_image(image_bytes(noise_image(40, 30, 2), "PNG"), LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # global Pillow state untouched
