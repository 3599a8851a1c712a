"""Video decode worker: `python -m internvl_serve.encoder.media.video_worker`, one per pool slot.

FFmpeg (through PyAV) has crashed on hostile and truncated files, so decoding runs here, in a process of
its own: a crash or a hang takes down this worker, never the server, which kills and replaces it. It imports
only PyAV and numpy (no torch), so a replacement starts quickly.

Per request, over stdin/stdout (wire.py):
  server -> {"op": "decode", "limits": {...}} + the file bytes
  worker -> {"stage": "count", "total": N, ...}      (a demux pass: video packets, nothing decoded)
  server -> {"op": "sample", "indices": [...]}       (the server picks frames with transformers' rule)
  worker -> {"stage": "frames", ...} + RGB uint8 frames, only the sampled ones are ever kept;
            or {"stage": "count", "recount": true, ...} when fewer/more frames decoded than packets were
            counted, and the exchange repeats once with the decoded count;
  worker -> {"stage": "error", "message": ...} at any point for a file it rejects.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from internvl_serve.encoder.media import wire

# FFmpeg demuxer names accepted (the only ones FFmpeg may probe: no image pipes, playlists, raw streams).
CONTAINERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts")
CODECS = ("h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mjpeg", "mpeg1video", "mpeg2video")
ACCEPTED = "MP4/MOV, WebM/MKV, AVI or MPEG-TS with H.264, H.265, VP8, VP9, AV1, MPEG-4 part 2, MPEG-1/2 or MJPEG video"
MAX_REQUEST_BYTES = 1 << 34  # the server enforces the real byte limit before sending
_TEST_CRASH = b"INTERNVL-TEST-CRASH"
_TEST_HANG = b"INTERNVL-TEST-HANG"
_TEST_ALLOC = b"INTERNVL-TEST-ALLOC"  # what a decompression bomb does: allocate until the limit stops it


class Rejected(Exception):
    """A file this worker will not decode; the message goes to the client as is."""


def _open(av, data: bytes):
    try:
        return av.open(io.BytesIO(data), mode="r", options={"format_whitelist": ",".join(CONTAINERS)})
    except av.error.ArgumentError:
        raise Rejected(f"the bytes are not a video container this service reads; send {ACCEPTED}") from None
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise Rejected(
            f"the bytes could not be opened as a video ({_reason(exc)}): the file is not a video, or it is "
            f"truncated or corrupt; send {ACCEPTED}"
        ) from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]


def _video_stream(container):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise Rejected(f"the file has no video stream (streams found: {', '.join(kinds)}); send {ACCEPTED}")
    stream = container.streams.video[0]
    codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
    if codec not in CODECS:
        raise Rejected(f"video codec {codec!r} is not supported; send {ACCEPTED}")
    return stream, codec


def _check_frame_size(width: int, height: int, limits: dict[str, Any]) -> None:
    if width < 1 or height < 1:
        raise Rejected(f"video frames are {width}x{height}; the file is corrupt")
    if width * height > limits["max_video_pixels_per_frame"]:
        raise Rejected(
            f"video frames are {width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{limits['max_video_pixels_per_frame'] / 1e6:.1f} megapixels per frame: send a smaller resolution"
        )


def _check_duration(seconds: float, limits: dict[str, Any]) -> None:
    if seconds > limits["max_video_seconds"]:
        raise Rejected(
            f"video is {seconds:.1f} s long; the limit is {limits['max_video_seconds']:.1f} s: send a shorter clip"
        )


def probe(av, data: bytes, limits: dict[str, Any]) -> dict[str, Any]:
    """Check the header and count the video packets (a demux pass, nothing decoded)."""
    with _open(av, data) as container:
        stream, codec = _video_stream(container)
        _check_frame_size(stream.codec_context.width, stream.codec_context.height, limits)
        if container.duration:
            _check_duration(container.duration / 1_000_000, limits)
        if stream.duration and stream.time_base:
            _check_duration(float(stream.duration * stream.time_base), limits)
        total = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    total += 1
                    if total > limits["max_video_frames"]:
                        raise Rejected(f"video has more than {limits['max_video_frames']} frames; send a shorter clip")
        except av.error.FFmpegError as exc:
            raise Rejected(f"video is corrupt ({_reason(exc)}); send a complete, valid file") from None
        if stream.frames and total < stream.frames:
            # The header (MP4 sample table, AVI index) promised more than the file holds.
            raise Rejected(f"video is truncated: the header lists {stream.frames} frames but only {total} are present")
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        if fps and total:
            _check_duration(total / fps, limits)
        return {
            "total": total,
            "fps": fps,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "codec": codec,
            "container": container.format.name,
        }


def decode(av, data: bytes, indices: list[int], limits: dict[str, Any]) -> tuple[int, dict[int, Any]]:
    """Decode every frame once, keeping only `indices` as RGB uint8 arrays; returns (decoded count, kept)."""
    import numpy as np

    wanted = set(indices)
    kept: dict[int, Any] = {}
    count = 0
    with _open(av, data) as container:
        stream, _ = _video_stream(container)
        try:
            for frame in container.decode(stream):
                _check_frame_size(frame.width, frame.height, limits)
                if count in wanted:
                    # the oracle's conversion; contiguous so it goes down the pipe as is
                    kept[count] = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
                count += 1
        except av.error.FFmpegError as exc:
            raise Rejected(f"video is corrupt ({_reason(exc)}); send a complete, valid file") from None
    return count, kept


def _allocate_past_the_limit() -> None:
    import resource

    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        raise Rejected("test hook: no memory limit is set, so nothing is allocated")
    held = []
    while True:  # ends in MemoryError at RLIMIT_AS
        held.append(bytearray(64 << 20))


def _serve_one(av, rfd: int, wfd: int, header: dict[str, Any], data: bytes, test_hooks: bool) -> None:
    if test_hooks and data.startswith(_TEST_CRASH):
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder crash looks like to the server
    if test_hooks and data.startswith(_TEST_HANG):
        import time

        time.sleep(3600)
    if test_hooks and data.startswith(_TEST_ALLOC):
        _allocate_past_the_limit()
    limits = header["limits"]
    info = probe(av, data, limits)
    if info["total"] == 0:
        raise Rejected("video has no frames; send a file with at least one video frame")
    wire.send(wfd, {"stage": "count", **info})
    for attempt in range(2):
        reply, _ = wire.receive(rfd, max_payload=0)
        indices = [int(i) for i in reply["indices"]]
        count, kept = decode(av, data, indices, limits)
        if count == 0:
            raise Rejected("video has no decodable frames; the file is corrupt")
        if count == info["total"]:
            frames = [kept[i] for i in indices]
            shapes = [list(f.shape) for f in frames]
            wire.send(wfd, {"stage": "frames", "indices": indices, "shapes": shapes, "decoded": count}, frames)
            return
        # The decoder dropped or added frames relative to the packets: sample again from what decodes.
        info = {**info, "total": count}
        if attempt == 0:
            wire.send(wfd, {"stage": "count", "recount": True, **info})
    raise Rejected("video decodes to a different number of frames on each pass; the file is corrupt")


def _memory_limit(argv: list[str]) -> int | None:
    """Apply `--memory-limit-bytes N` as this process's RLIMIT_AS (address space): FFmpeg's and numpy's
    allocations past it fail here, in this worker, not on the host."""
    if "--memory-limit-bytes" not in argv:
        return None
    import resource

    limit = int(argv[argv.index("--memory-limit-bytes") + 1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


def main(argv: list[str]) -> int:
    test_hooks = "--enable-test-hooks" in argv
    memory_limit = _memory_limit(argv)
    # The protocol owns the original stdout; anything else printing (FFmpeg, Python) goes to stderr.
    rfd, wfd = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    import av  # imported after the fds are set up, so a noisy import cannot corrupt the protocol

    wire.send(wfd, {"stage": "ready", "pid": os.getpid()})
    while True:
        try:
            header, received = wire.receive(rfd, max_payload=MAX_REQUEST_BYTES)
        except wire.WireClosed:
            return 0  # the server closed the pipe: shut down
        data = bytes(received)  # BytesIO shares a bytes object instead of copying it on every open
        del received
        out_of_memory = False
        try:
            _serve_one(av, rfd, wfd, header, data, test_hooks)
        except Rejected as exc:
            wire.send(wfd, {"stage": "error", "message": str(exc)})
        except wire.WireClosed:
            return 0
        except MemoryError:
            out_of_memory = True  # answered below, once the traceback (and what it holds) is gone
        except Exception as exc:  # noqa: BLE001 - an unexpected failure still answers, then the server goes on
            wire.send(wfd, {"stage": "error", "message": f"video could not be decoded ({_reason(exc)})"})
        if out_of_memory:
            del data
            limit = f"{memory_limit // (1 << 20)} MiB" if memory_limit else "the memory available"
            message = f"decoding this video needs more than the video worker's {limit}; send a smaller video"
            wire.send(wfd, {"stage": "error", "message": message})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
