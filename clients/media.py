"""Media normalisation: whatever a chat part holds becomes the bytes of an encoded file, then a Media proto.

Images: a path (str or Path) or file:// url is read; bytes are sent as they are; an http(s) url is fetched
when allowed (fetch.py); a PIL image is saved as PNG, losslessly and in its own mode (RGBA stays RGBA, so
the server's RGB conversion is the one transformers applies); a numpy array HxW, HxWx3 or HxWx4 (uint8)
becomes a PNG as well.

Videos: a path, url or bytes of a container file is sent as is. Frames given as a TxHxWx3 uint8 array or a
list of HxWx3 arrays / PIL images are re-encoded into an MP4 with H.264 in RGB at qp=0 (libx264rgb), which
is lossless: the server decodes exactly these frames back.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any

from internvl_serve.clients.errors import MediaError
from internvl_serve.clients.fetch import UrlPolicy, fetch_url, is_url
from internvl_serve.pb.internvl.v1 import media_pb2

IMAGE = "image"
VIDEO = "video"
VIDEO_FPS = 24  # frame rate written into videos made from frames (the server samples frames by index)

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def image_media(value: Any, policy: UrlPolicy) -> media_pb2.Media:
    return media_pb2.Media(image=media_pb2.Image(data=image_bytes(value, policy)))


def video_media(value: Any, policy: UrlPolicy, num_frames: int = 0) -> media_pb2.Media:
    return media_pb2.Media(video=media_pb2.Video(data=video_bytes(value, policy), num_frames=num_frames))


def image_bytes(value: Any, policy: UrlPolicy) -> bytes:
    """Encoded image file bytes for any accepted image value."""
    data = _file_like_bytes(value, IMAGE, policy)
    if data is not None:
        return data
    if _is_pil(value):
        return pil_to_png(value)
    if hasattr(value, "__array__"):
        return array_to_png(value)
    raise MediaError(f"cannot use a {type(value).__name__} as an image; {_IMAGE_HELP}")


def video_bytes(value: Any, policy: UrlPolicy) -> bytes:
    """Container file bytes for any accepted video value."""
    data = _file_like_bytes(value, VIDEO, policy)
    if data is not None:
        return data
    if isinstance(value, (list, tuple)) or hasattr(value, "__array__"):
        return frames_to_mp4(value)
    raise MediaError(f"cannot use a {type(value).__name__} as a video; {_VIDEO_HELP}")


def guess_kind(value: Any, data: bytes | None = None) -> str:
    """IMAGE or VIDEO for a bare media value (no part type to say which): by the bytes' signature, or for
    arrays by rank (4-D or a list of frames is a video)."""
    if data is not None:
        if data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            return IMAGE
        return VIDEO
    if _is_pil(value):
        return IMAGE
    if isinstance(value, (list, tuple)):
        return VIDEO
    if hasattr(value, "__array__"):
        import numpy as np

        return VIDEO if np.asarray(value).ndim == 4 else IMAGE
    raise MediaError(f"cannot tell whether a {type(value).__name__} is an image or a video")


def source_bytes(value: Any, kind: str, policy: UrlPolicy) -> bytes | None:
    """The bytes of a path, url or bytes value (for guessing its kind); None for pixels (PIL/numpy)."""
    return _file_like_bytes(value, kind, policy)


# --- paths, urls, bytes -----------------------------------------------------------------------------------

_IMAGE_HELP = "pass a path, bytes, an http(s) url, a PIL image or a uint8 numpy array (HxW, HxWx3, HxWx4)"
_VIDEO_HELP = "pass a path, bytes, an http(s) url, or frames (a TxHxWx3 uint8 array or a list of frames)"


def _file_like_bytes(value: Any, kind: str, policy: UrlPolicy) -> bytes | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise MediaError(f"{kind} bytes are empty")
        return data
    if isinstance(value, str) and is_url(value):
        return fetch_url(value, policy)
    if isinstance(value, str) and value.startswith("data:"):
        return _data_uri(value, kind)
    if isinstance(value, str) and value.startswith("file://"):
        return read_file(value[len("file://") :], kind)
    if isinstance(value, (str, os.PathLike)):
        return read_file(value, kind)
    return None


def read_file(path: str | os.PathLike, kind: str) -> bytes:
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise MediaError(f"{kind} file not found: {p}") from None
    except IsADirectoryError:
        raise MediaError(f"{kind} path is a directory, not a file: {p}") from None
    except PermissionError:
        raise MediaError(f"{kind} file is not readable (permission denied): {p}") from None
    except OSError as exc:
        raise MediaError(f"cannot read {kind} file {p}: {exc.strerror or exc}") from None
    if not data:
        raise MediaError(f"{kind} file is empty: {p}")
    return data


def decode_base64(text: str, kind: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise MediaError(f"the {kind}'s base64 data is not valid base64") from None
    if not data:
        raise MediaError(f"the {kind}'s base64 data is empty")
    return data


def _data_uri(uri: str, kind: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise MediaError(f"only base64 data: uris are accepted for a {kind} (data:...;base64,...)")
    return decode_base64(payload, kind)


# --- pixels -> files ---------------------------------------------------------------------------------------


def _is_pil(value: Any) -> bool:
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(value).__mro__)


def pil_to_png(image: Any) -> bytes:
    """PNG of the image in its own mode; modes PNG cannot hold (CMYK, YCbCr, float, ...) go to RGB(A) first,
    as transformers would convert them."""
    buf = io.BytesIO()
    try:
        image.save(buf, format="PNG")
    except (OSError, KeyError, ValueError):
        buf = io.BytesIO()
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image.convert("RGBA" if has_alpha else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _as_uint8_array(value: Any, what: str):
    import numpy as np

    array = np.asarray(value)
    if array.dtype != np.uint8:
        raise MediaError(f"{what} must be uint8 (0-255), got dtype {array.dtype}")
    return array


def array_to_png(value: Any) -> bytes:
    """PNG of a uint8 image array: HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA); CxHxW is transposed."""
    from PIL import Image

    array = _as_uint8_array(value, "a numpy image")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
        array = array.transpose(1, 2, 0)  # channels first (as torchvision tensors) -> channels last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        mode = "RGB" if array.shape[-1] == 3 else "RGBA"
    else:
        raise MediaError(f"a numpy image must be HxW, HxWx3 or HxWx4, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise MediaError(f"a numpy image must not be empty, got shape {tuple(array.shape)}")
    return pil_to_png(Image.fromarray(array, mode))


def _frame_array(frame: Any, index: int):
    import numpy as np

    array = np.asarray(frame.convert("RGB")) if _is_pil(frame) else _as_uint8_array(frame, f"video frame {index}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise MediaError(f"video frame {index} must be HxWx3 RGB (or HxW), got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array)


def frames_to_mp4(frames: Any, fps: int = VIDEO_FPS) -> bytes:
    """Frames (TxHxWx3 uint8, or a list of HxWx3 arrays or PIL images) as a lossless H.264 MP4."""
    import av

    frames = list(frames)
    if not frames:
        raise MediaError("a video needs at least one frame")
    arrays = [_frame_array(f, i) for i, f in enumerate(frames)]
    height, width = arrays[0].shape[:2]
    for i, a in enumerate(arrays):
        if a.shape[:2] != (height, width):
            raise MediaError(f"video frame {i} is {a.shape[1]}x{a.shape[0]}, frame 0 is {width}x{height}")
    # H.264 in RGB at qp=0 is exact; without libx264rgb, 4:4:4 YUV at qp=0 only rounds the colour transform.
    rgb = "libx264rgb" in av.codecs_available
    codec, pix_fmt = ("libx264rgb", "rgb24") if rgb else ("libx264", "yuv444p")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options={"qp": "0", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for array in arrays:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
