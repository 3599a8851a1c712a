"""Media normalisation: every accepted kind of value becomes the bytes the server decodes to the same
pixels (PNG for pixels, lossless H.264 MP4 for frames); bad values fail with a message naming the problem."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from internvl_serve.clients import media as m
from internvl_serve.clients.errors import MediaError
from internvl_serve.clients.fetch import UrlPolicy
from internvl_testing.media import alpha_image, image_bytes, noise_image, write_video

OFF = UrlPolicy()


def _pixels(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _decode_video(data: bytes) -> tuple[np.ndarray, str, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream.codec_context.name, container.format.name


def _frames(t=6, h=37, w=51, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# --- files and bytes --------------------------------------------------------------------------------------


def test_paths_are_read_as_they_are(tmp_path):
    data = image_bytes(noise_image(30, 20, 1), "JPEG", quality=80)
    (tmp_path / "a.jpg").write_bytes(data)
    assert m.image_bytes(str(tmp_path / "a.jpg"), OFF) == data
    assert m.image_bytes(tmp_path / "a.jpg", OFF) == data
    assert m.image_bytes(f"file://{tmp_path / 'a.jpg'}", OFF) == data
    video = write_video(tmp_path / "v.mkv", frames=3)
    assert m.video_bytes(video, OFF) == video.read_bytes()


def test_bytes_are_sent_unchanged():
    data = image_bytes(noise_image(30, 20, 1), "WEBP", quality=50)
    assert m.image_bytes(data, OFF) == data
    assert m.image_bytes(bytearray(data), OFF) == data
    assert m.image_bytes(memoryview(data), OFF) == data
    assert m.video_bytes(b"\x00\x00\x00\x18ftypmp42", OFF) == b"\x00\x00\x00\x18ftypmp42"


def test_base64_data_uris():
    data = image_bytes(noise_image(8, 8, 1), "PNG")
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert m.image_bytes(uri, OFF) == data
    with pytest.raises(MediaError, match="base64"):
        m.image_bytes("data:image/png,rawtext", OFF)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nope.jpg", "image file not found: .*nope.jpg"),
        (lambda d: d, "image path is a directory"),
        (lambda d: (d / "empty.jpg", (d / "empty.jpg").write_bytes(b""))[0], "image file is empty"),
    ],
)
def test_unreadable_paths_say_why(tmp_path, make, message):
    with pytest.raises(MediaError, match=message):
        m.image_bytes(str(make(tmp_path)), OFF)


def test_empty_bytes_and_unknown_types_are_refused():
    with pytest.raises(MediaError, match="image bytes are empty"):
        m.image_bytes(b"", OFF)
    with pytest.raises(MediaError, match="cannot use a dict as an image"):
        m.image_bytes({"x": 1}, OFF)
    with pytest.raises(MediaError, match="cannot use a int as a video"):
        m.video_bytes(3, OFF)


def test_urls_need_permission(tmp_path):
    with pytest.raises(MediaError, match="allow_urls=True"):
        m.image_bytes("https://example.invalid/cat.jpg", OFF)


# --- PIL and numpy images -> PNG ------------------------------------------------------------------------------


def test_pil_rgba_stays_rgba_and_lossless():
    image = alpha_image(40, 30, 2)
    back = _pixels(m.image_bytes(image, OFF))
    assert back.format == "PNG" and back.mode == "RGBA"
    assert np.array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "1", "I;16"])
def test_pil_modes_png_holds_are_kept(mode):
    image = noise_image(33, 17, 3).convert(mode) if mode != "I;16" else Image.new("I;16", (33, 17), 4000)
    back = _pixels(m.pil_to_png(image))
    assert back.mode == image.mode
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_palette_transparency_survives():
    image = noise_image(20, 10, 4).quantize(16)
    image.info["transparency"] = 3
    back = _pixels(m.pil_to_png(image))
    assert back.mode == "P" and back.info.get("transparency") == 3
    assert np.array_equal(np.asarray(back.convert("RGBA")), np.asarray(image.convert("RGBA")))


def test_modes_png_cannot_hold_become_rgb_as_transformers_would():
    cmyk = noise_image(20, 10, 5).convert("CMYK")
    back = _pixels(m.pil_to_png(cmyk))
    assert back.mode == "RGB"
    assert np.array_equal(np.asarray(back), np.asarray(cmyk.convert("RGB")))


def test_opened_image_files_are_re_encoded_losslessly():
    original = Image.open(io.BytesIO(image_bytes(noise_image(25, 15, 6), "JPEG")))
    back = _pixels(m.image_bytes(original, OFF))
    assert back.format == "PNG" and np.array_equal(np.asarray(back), np.asarray(original.convert("RGB")))


def test_numpy_images():
    rgb = np.asarray(noise_image(31, 19, 7))
    assert np.array_equal(np.asarray(_pixels(m.image_bytes(rgb, OFF))), rgb)
    rgba = np.asarray(alpha_image(31, 19, 7))
    back = _pixels(m.image_bytes(rgba, OFF))
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back), rgba)
    gray = rgb[..., 0].copy()
    back = _pixels(m.image_bytes(gray, OFF))
    assert back.mode == "L" and np.array_equal(np.asarray(back), gray)
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    assert np.array_equal(np.asarray(_pixels(m.image_bytes(chw, OFF))), rgb)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((4, 4, 2), np.uint8), "HxW, HxWx3 or HxWx4"),
        (np.zeros((2, 4, 4, 3), np.uint8), "HxW, HxWx3 or HxWx4"),
        (np.zeros((0, 4, 3), np.uint8), "must not be empty"),
    ],
)
def test_bad_numpy_images(array, message):
    with pytest.raises(MediaError, match=message):
        m.image_bytes(array, OFF)


# --- frames -> lossless MP4 -------------------------------------------------------------------------------------


def test_numpy_frames_round_trip_exactly_in_a_container_the_server_reads():
    from internvl_serve.encoder.media.video_worker import CODECS, CONTAINERS

    frames = _frames()
    data = m.video_bytes(frames, OFF)
    back, codec, container = _decode_video(data)
    assert np.array_equal(back, frames), "H.264 RGB at qp=0 must give the frames back exactly"
    assert codec in CODECS and set(container.split(",")) & set(CONTAINERS)


def test_frame_lists_of_arrays_pil_images_and_grey():
    frames = _frames(t=3, h=16, w=24, seed=1)
    back, _, _ = _decode_video(m.video_bytes(list(frames), OFF))
    assert np.array_equal(back, frames)
    back, _, _ = _decode_video(m.video_bytes([Image.fromarray(f) for f in frames], OFF))
    assert np.array_equal(back, frames)
    grey = frames[..., 1].copy()
    back, _, _ = _decode_video(m.video_bytes(grey, OFF))
    assert np.array_equal(back, np.repeat(grey[..., None], 3, axis=-1))


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "at least one frame"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], "frame 1 is 10x8, frame 0 is 8x8"),
        (np.zeros((2, 8, 8, 3), np.float64), "video frame 0 must be uint8"),
        (np.zeros((2, 8, 8, 4), np.uint8), "must be HxWx3 RGB"),
    ],
)
def test_bad_frames(frames, message):
    with pytest.raises(MediaError, match=message):
        m.video_bytes(frames, OFF)


def test_media_protos(tmp_path):
    png = image_bytes(noise_image(8, 8, 1), "PNG")
    assert m.image_media(png, OFF).image.data == png
    video = m.video_media(_frames(t=2, h=8, w=8), OFF, num_frames=5)
    assert video.WhichOneof("source") == "video" and video.video.num_frames == 5 and video.video.data


# --- telling images from videos (encode() of bare values) --------------------------------------------------------


def test_guess_kind(tmp_path):
    base = noise_image(16, 16, 1)
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"):
        assert m.guess_kind(None, image_bytes(base, fmt)) == m.IMAGE, fmt
    for suffix in (".mp4", ".mkv", ".webm", ".avi"):
        codec = "libvpx-vp9" if suffix == ".webm" else ("mpeg4" if suffix == ".avi" else "libx264")
        data = Path(write_video(tmp_path / f"v{suffix}", frames=2, codec=codec)).read_bytes()
        assert m.guess_kind(None, data) == m.VIDEO, suffix
    assert m.guess_kind(base) == m.IMAGE
    assert m.guess_kind(np.zeros((4, 4, 3), np.uint8)) == m.IMAGE
    assert m.guess_kind(np.zeros((2, 4, 4, 3), np.uint8)) == m.VIDEO
    assert m.guess_kind([np.zeros((4, 4, 3), np.uint8)]) == m.VIDEO
    with pytest.raises(MediaError, match="cannot tell"):
        m.guess_kind(object())
