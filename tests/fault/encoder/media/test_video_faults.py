"""Bad videos become InvalidMedia (ResourceExhausted for size); a crashing or hanging decoder never takes
the server process down, and the next request still works."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest

from internvl_serve.common.errors import InvalidMedia, ResourceExhausted, Unavailable
from internvl_serve.encoder.media.config import MediaLimits
from internvl_serve.encoder.media.video import VideoDecoder
from internvl_testing.media import audio_only, image_bytes, noise_image, write_video, zero_frame_video

CRASH = b"INTERNVL-TEST-CRASH"
HANG = b"INTERNVL-TEST-HANG"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-videos")
    return {
        "good": write_video(root / "good.mp4", frames=12, seed=1).read_bytes(),
        "faststart": write_video(
            root / "fs.mp4", frames=12, seed=2, container_options={"movflags": "faststart"}
        ).read_bytes(),
        "ffv1": write_video(root / "ffv1.mkv", frames=3, codec="ffv1", pix_fmt="yuv420p").read_bytes(),
        "big": write_video(root / "big.mkv", frames=3, width=320, height=240, seed=3).read_bytes(),
    }


def _rejected(decoder, data, num_frames=8, limits=None, exc=InvalidMedia) -> str:
    with pytest.raises(exc) as info:
        decoder.decode_sync(data, num_frames, limits=limits)
    message = str(info.value)
    assert message and "Traceback" not in message and "\n" not in message
    return message


def _still_works(decoder, clips) -> None:
    frames = decoder.decode_sync(clips["good"], 4)
    assert frames.pixel_values.shape == (4, 3, 64, 64) and frames.total_frames == 12


def test_empty_random_and_non_video_bytes(hooked_decoder, clips):
    assert "empty" in _rejected(hooked_decoder, b"")
    random = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    assert "could not be opened as a video" in _rejected(hooked_decoder, random)
    assert "not a video container" in _rejected(hooked_decoder, image_bytes(noise_image(64, 64, 1), "PNG"))
    _still_works(hooked_decoder, clips)


def test_truncated_files(hooked_decoder, clips):
    good = clips["good"]
    assert "truncated or corrupt" in _rejected(hooked_decoder, good[: len(good) // 2])  # index (moov) at the end: lost
    front = clips["faststart"]
    message = _rejected(hooked_decoder, front[: len(front) // 2])  # index first: it promises more frames
    assert "truncated: the header lists 12 frames but only 6 are present" in message


def test_no_frames_and_no_video_stream(hooked_decoder, clips):
    assert "no frames" in _rejected(hooked_decoder, zero_frame_video())
    message = _rejected(hooked_decoder, audio_only())
    assert "no video stream" in message and "audio" in message


def test_unsupported_codec(hooked_decoder, clips):
    message = _rejected(hooked_decoder, clips["ffv1"])
    assert "codec 'ffv1' is not supported" in message and "H.264" in message


def test_limits_on_duration_frames_and_frame_size(hooked_decoder, clips):
    good = clips["good"]  # 12 frames at 10 fps, 96x64
    assert "1.2 s long; the limit is 1.0 s" in _rejected(
        hooked_decoder, good, limits=MediaLimits(max_video_seconds=1.0)
    )
    assert "more than 10 frames" in _rejected(hooked_decoder, good, limits=MediaLimits(max_video_frames=10))
    message = _rejected(hooked_decoder, clips["big"], limits=MediaLimits(max_video_pixels_per_frame=100 * 100))
    assert "320x240" in message and "per frame" in message


def test_frame_count_requests(hooked_decoder, clips):
    assert "num_frames=33 is over the limit of 32" in _rejected(hooked_decoder, clips["good"], num_frames=33)
    assert "negative" in _rejected(hooked_decoder, clips["good"], num_frames=-1)


def test_over_the_byte_limit_is_resource_exhausted(hooked_decoder, clips):
    good = clips["good"]
    message = _rejected(hooked_decoder, good, limits=MediaLimits(max_video_bytes=len(good) - 1), exc=ResourceExhausted)
    assert f"{len(good)} bytes" in message


def test_a_crashing_decoder_is_contained_and_replaced(hooked_decoder, clips):
    replaced = hooked_decoder.workers_replaced
    message = _rejected(hooked_decoder, CRASH + bytes(64))
    assert "decoder crashed" in message and "SIGSEGV" in message and "corrupt or unsupported" in message
    assert hooked_decoder.workers_replaced == replaced + 1
    for _ in range(3):  # both workers (the replacement included) serve requests
        _still_works(hooked_decoder, clips)


def test_a_hanging_decoder_times_out_and_is_replaced(hooked_decoder, clips):
    replaced = hooked_decoder.workers_replaced
    message = _rejected(hooked_decoder, HANG)  # the fixture's decode timeout is 3 s
    assert "within 3 s" in message
    assert hooked_decoder.workers_replaced == replaced + 1
    _still_works(hooked_decoder, clips)


def test_crashes_under_concurrency_do_not_disturb_other_requests(hooked_decoder, clips):
    async def main():
        tasks = [
            hooked_decoder.decode(CRASH, 4),
            hooked_decoder.decode(clips["good"], 4),
            hooked_decoder.decode(CRASH, 4),
        ]
        return await asyncio.gather(*tasks, return_exceptions=True)

    crashed, good, crashed_too = asyncio.run(main())
    assert isinstance(crashed, InvalidMedia) and isinstance(crashed_too, InvalidMedia)
    assert good.pixel_values.shape == (4, 3, 64, 64)
    assert os.getpid() > 0  # we are still here
    _still_works(hooked_decoder, clips)


def test_hooks_are_unreachable_without_the_flag(fault_pp, clips):
    with VideoDecoder(fault_pp[1], MediaLimits(decode_timeout_s=10), workers=1) as decoder:
        assert "not a video container" in _rejected(decoder, CRASH + bytes(64))
        assert decoder.workers_replaced == 0
        _still_works(decoder, clips)


def test_a_worker_that_died_while_idle_is_replaced_without_failing_a_request(fault_pp, clips):
    with VideoDecoder(fault_pp[1], MediaLimits(), workers=1) as decoder:
        _still_works(decoder, clips)
        (worker,) = decoder._pool._all  # white-box: the one worker process
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        _still_works(decoder, clips)
        assert decoder.workers_replaced == 1


def test_closing_under_a_running_decode_answers_unavailable(fault_pp):
    decoder = VideoDecoder(fault_pp[1], MediaLimits(decode_timeout_s=30), workers=1, enable_test_hooks=True)
    outcome: list[BaseException] = []

    def run():
        try:
            decoder.decode_sync(HANG, 4)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.0)  # the request is inside the (hanging) worker by now
    decoder.close()
    thread.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable), outcome


def test_closed_decoder_refuses_work(fault_pp, clips):
    decoder = VideoDecoder(fault_pp[1], MediaLimits(), workers=1)
    decoder.close()
    decoder.close()  # idempotent
    with pytest.raises(Unavailable, match="shutting down"):
        decoder.decode_sync(clips["good"], 4)


def test_a_video_that_needs_more_memory_than_the_worker_limit_fails_alone(fault_pp, clips):
    """RLIMIT_AS on the worker: a decompression bomb's allocations fail in the worker, the request gets an
    actionable INVALID_ARGUMENT, and the next video decodes (the host never ran out)."""
    limits = MediaLimits(decode_timeout_s=30, video_worker_memory_bytes=512 << 20)
    with VideoDecoder(fault_pp[1], limits, workers=1, enable_test_hooks=True) as decoder:
        with pytest.raises(InvalidMedia, match="more than the video worker's 512 MiB"):
            decoder.decode_sync(b"INTERNVL-TEST-ALLOC" + b"\0" * 64, 4)
        (worker,) = decoder._pool._all  # white-box: the limit is on the worker process itself
        assert _address_space_limit(worker.proc.pid) == (512 << 20, 512 << 20)
        _still_works(decoder, clips)
        assert decoder.workers_replaced == 0  # the worker answered and lived on


def _address_space_limit(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max address space"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no address-space line")
