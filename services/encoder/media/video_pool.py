"""A small pool of long-lived video worker processes, with crash and timeout containment.

Each worker serves one request at a time over its stdin/stdout (wire.py). A worker that dies (a signal, an
abort) or misses the decode deadline is killed and replaced, and the request fails with InvalidMedia; the
server process is never at risk. Workers are plain subprocesses running `python -m ...video_worker` rather
than multiprocessing children, so they never re-import the server's __main__ or torch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from internvl_serve.common.errors import InvalidMedia, Unavailable
from internvl_serve.encoder.media import wire

log = logging.getLogger("internvl_serve.encoder.media")
_WORKER_MODULE = "internvl_serve.encoder.media.video_worker"
_F_SETPIPE_SZ = 1031  # Linux: bigger pipe buffers mean fewer round trips for large files


@dataclass
class RawVideo:
    """What a worker sends back: the sampled frames as RGB uint8 [H, W, 3] plus the file's metadata."""

    frames: list[np.ndarray]
    indices: list[int]
    total_frames: int
    fps: float
    width: int
    height: int
    codec: str
    container: str


class WorkerCrashed(Exception):
    """The worker answered with something the protocol does not allow."""


# How a worker fails (as opposed to rejecting a file): it hangs, dies, or talks nonsense.
_WORKER_FAILURES = (wire.WireTimeout, wire.WireClosed, WorkerCrashed, ValueError, KeyError, TypeError)


class _Worker:
    def __init__(self, argv: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for the server does not hit the workers mid-request
        )
        self.to_fd = self.proc.stdin.fileno()
        self.from_fd = self.proc.stdout.fileno()
        for fd in (self.to_fd, self.from_fd):
            os.set_blocking(fd, False)
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
        self.ready = False

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        header, _ = wire.receive(self.from_fd, deadline=time.monotonic() + timeout_s, max_payload=0)
        if header.get("stage") != "ready":
            raise wire.WireClosed("unexpected first message")
        self.ready = True

    def exit_description(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


WORKER_STARTUP_TIMEOUT_S = 60.0  # a worker process must answer its first request within this


class VideoWorkerPool:
    """`workers` processes; `run` borrows one for a request and gives it back (or replaces it)."""

    def __init__(
        self,
        workers: int,
        *,
        enable_test_hooks: bool = False,
        startup_timeout_s: float = WORKER_STARTUP_TIMEOUT_S,
        memory_limit_bytes: int | None = None,
    ):
        """`memory_limit_bytes`: each worker's RLIMIT_AS (the worker sets it on itself before importing PyAV)."""
        if workers < 1:
            raise ValueError("a video worker pool needs at least one worker")
        self._argv = [sys.executable, "-m", _WORKER_MODULE] + (["--enable-test-hooks"] if enable_test_hooks else [])
        if memory_limit_bytes:
            self._argv += ["--memory-limit-bytes", str(int(memory_limit_bytes))]
        # glibc gives each thread its own 64 MiB malloc arena; under RLIMIT_AS, FFmpeg's threads would spend
        # the limit on arenas. Two are plenty for one decode at a time.
        self._env = {"MALLOC_ARENA_MAX": "2", **os.environ}
        self._startup_timeout_s = startup_timeout_s
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._all: set[_Worker] = set()
        self.replaced = 0  # workers replaced after a crash, a timeout, or dying while idle
        for _ in range(workers):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker(self._argv, self._env)
        with self._lock:
            self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
            closed = self._closed
            if not closed:
                self.replaced += 1
        if not closed:
            self._idle.put(self._spawn())

    def run(
        self,
        data: bytes,
        limits: dict[str, Any],
        choose_indices: Callable[[int], list[int]],
        *,
        timeout_s: float,
        max_frame_bytes: int,
    ) -> RawVideo:
        """Decode `data` in a worker; `choose_indices(total)` picks the frames to keep."""
        worker = self._borrow()
        try:
            worker.wait_ready(self._startup_timeout_s)
        except (wire.WireTimeout, wire.WireClosed, ValueError) as exc:
            self._retire(worker)
            raise RuntimeError(f"a video worker failed to start ({type(exc).__name__})") from None
        deadline = time.monotonic() + timeout_s
        try:
            result = _exchange(worker, data, limits, choose_indices, deadline, max_frame_bytes)
        except InvalidMedia:
            self._give_back(worker)  # the worker rejected the file and is ready for the next one
            raise
        except _WORKER_FAILURES as exc:
            timed_out = isinstance(exc, wire.WireTimeout)
            how = f"timed out after {timeout_s:g} s" if timed_out else worker.exit_description()
            self._retire(worker)
            log.warning("video worker %s during a decode; replaced", how)
            raise self._failure(timed_out, how, timeout_s) from None
        except BaseException:
            self._retire(worker)  # e.g. KeyboardInterrupt mid-exchange: the worker's state is unknown
            raise
        self._give_back(worker)
        return result

    def _failure(self, timed_out: bool, how: str, timeout_s: float) -> Exception:
        if self._closed:  # close() killed the worker under this request
            return Unavailable("the video decoder is shutting down; retry on another replica")
        if timed_out:
            return InvalidMedia(
                f"video could not be decoded within {timeout_s:g} s; the file is corrupt, unsupported or too "
                "long to decode: send a shorter clip"
            )
        return InvalidMedia(
            f"video could not be decoded: the decoder crashed ({how}); the file is corrupt or unsupported"
        )

    def _borrow(self) -> _Worker:
        while True:
            if self._closed:
                raise Unavailable("the video decoder is shutting down; retry on another replica")
            try:
                worker = self._idle.get(timeout=0.5)
            except queue.Empty:
                continue
            if worker.proc.poll() is None:
                return worker
            # Died while idle (OOM killer, operator): not this request's fault; replace it and go on.
            log.warning("idle video worker %s; replaced", worker.exit_description())
            self._retire(worker)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            worker.kill()
        else:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop every worker (idle ones at once; busy ones are killed, their requests fail)."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()


def _exchange(
    worker: _Worker,
    data: bytes,
    limits: dict[str, Any],
    choose_indices: Callable[[int], list[int]],
    deadline: float,
    max_frame_bytes: int,
) -> RawVideo:
    wire.send(worker.to_fd, {"op": "decode", "limits": limits}, [data], deadline=deadline)
    info: dict[str, Any] = {}
    for _ in range(3):  # count -> (recount ->) frames
        header, payload = wire.receive(worker.from_fd, deadline=deadline, max_payload=max_frame_bytes)
        stage = header.get("stage")
        if stage == "error":
            raise InvalidMedia(str(header.get("message", "video could not be decoded")))
        if stage == "count":
            info = header
            wire.send(
                worker.to_fd, {"op": "sample", "indices": choose_indices(int(header["total"]))}, deadline=deadline
            )
        elif stage == "frames" and info:
            return RawVideo(
                frames=_split_frames(payload, header["shapes"]),
                indices=[int(i) for i in header["indices"]],
                total_frames=int(header["decoded"]),
                fps=float(info["fps"]),
                width=int(info["width"]),
                height=int(info["height"]),
                codec=str(info["codec"]),
                container=str(info["container"]),
            )
        else:
            raise WorkerCrashed(f"unexpected message {stage!r}")
    raise WorkerCrashed("too many messages")


def _split_frames(payload: bytearray, shapes: list[list[int]]) -> list[np.ndarray]:
    flat = np.frombuffer(payload, dtype=np.uint8)  # writable: wire reads into a bytearray
    frames, pos = [], 0
    for shape in shapes:
        h, w, c = (int(v) for v in shape)
        size = h * w * c
        if c != 3 or pos + size > flat.size:
            raise WorkerCrashed("frame sizes do not match the payload")
        frames.append(flat[pos : pos + size].reshape(h, w, 3))
        pos += size
    if pos != flat.size:
        raise WorkerCrashed("frame sizes do not match the payload")
    return frames
