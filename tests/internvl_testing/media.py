"""Test media made on the fly: images in every format the encoder accepts and small encoded videos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from internvl_serve.oracle.sample import noise_image, write_video  # noqa: F401 (the tests' media too)


def image_bytes(image: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def edited_checkpoint(src: Path, dst: Path, file_name: str, **changes) -> Path:
    """A copy of a checkpoint's processor and tokenizer files (no weights) with one config file edited."""
    import json
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    cfg = json.loads((dst / file_name).read_text())
    cfg.update(changes)
    (dst / file_name).write_text(json.dumps(cfg))
    return dst


# --- images in every accepted format and mode ------------------------------------------------------------


def alpha_image(width: int, height: int, seed: int) -> Image.Image:
    """RGBA with an alpha ramp, so dropping vs compositing alpha would give different pixels."""
    rgba = np.asarray(noise_image(width, height, seed).convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return Image.fromarray(rgba, "RGBA")


def animated_gif(width: int, height: int, seeds: tuple[int, ...] = (1, 2, 3)) -> bytes:
    frames = [noise_image(width, height, s) for s in seeds]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def image_variants(width: int = 150, height: int = 90, seed: int = 1) -> dict[str, bytes]:
    """One encoded file per format/mode the encoder must read exactly like transformers."""
    base = noise_image(width, height, seed)
    palette = base.quantize(64)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    gray16 = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    return {
        "jpeg_rgb": image_bytes(base, "JPEG", quality=90),
        "jpeg_progressive": image_bytes(base, "JPEG", quality=85, progressive=True),
        "jpeg_cmyk": image_bytes(base.convert("CMYK"), "JPEG"),
        "jpeg_exif_rotated": image_bytes(base, "JPEG", exif=exif),
        "png_rgb": image_bytes(base, "PNG"),
        "png_rgba": image_bytes(alpha_image(width, height, seed), "PNG"),
        "png_palette": image_bytes(palette, "PNG"),
        "png_palette_transparency": image_bytes(palette, "PNG", transparency=5),
        "png_rgb_colour_key": image_bytes(base, "PNG", transparency=base.getpixel((0, 0))),
        "png_16bit": image_bytes(gray16, "PNG"),
        "png_gray": image_bytes(base.convert("L"), "PNG"),
        "png_gray_alpha": image_bytes(alpha_image(width, height, seed).convert("LA"), "PNG"),
        "webp_lossy": image_bytes(base, "WEBP", quality=80),
        "webp_alpha": image_bytes(alpha_image(width, height, seed), "WEBP", lossless=True),
        "gif_animated": animated_gif(width, height),
        "bmp": image_bytes(base, "BMP"),
        "tiff": image_bytes(base, "TIFF"),
        "tiff_lzw": image_bytes(base, "TIFF", compression="tiff_lzw"),
    }


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with (almost) no pixel data: a decompression-bomb probe."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


# --- odd videos -----------------------------------------------------------------------------------------


def remux_with_extra_packets(data: bytes, extra: bytes, every: int = 5) -> bytes:
    """Copy a video's packets into Matroska, adding a packet of `extra` bytes after every `every` packets.

    With MPEG-4 part 2 and a "not coded" VOP as `extra`, the file has more packets than decodable frames.
    """
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format="matroska") as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        for i, packet in enumerate(p for p in src.demux(ist) if p.size):
            packet.stream = ost
            dst.mux(packet)
            if i % every == every - 1:
                filler = av.Packet(extra)
                filler.stream, filler.time_base = ost, packet.time_base
                filler.pts = filler.dts = packet.pts + 1
                dst.mux(filler)
    return out.getvalue()


# A P-VOP with vop_coded = 0 for a 10 fps MPEG-4 stream (4-bit time increment): decodes to no frame.
MPEG4_NOT_CODED_VOP = b"\x00\x00\x01\xb6\x50\x9f"


def audio_only(fmt: str = "matroska") -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def zero_frame_video() -> bytes:
    """An AVI with a video stream and no frames at all."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        container.start_encoding()
    return buf.getvalue()
