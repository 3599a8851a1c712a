"""The soak's clients: threads that each loop over a mix of real requests until the run ends, through
our client library (its retries and round-robin over the decoders are part of what is tested).

Mix per request: a new image (the encoders compute it), a repeated image (cache hits), a video, a
media_id from an earlier Encode (resent as bytes on NOT_FOUND, as a real client does after a cache loss),
a text chat, a stream cancelled after its first token, and a call with a 50 ms deadline. Cancellations and
short deadlines that expire are what the client asked for ("expected"); any other non-OK status is a
failure, retryable (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) or not.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import av
import numpy as np
from PIL import Image
from serving_workload import png_bytes

from internvl_serve.clients import InternVLClient, InternVLError, NotFoundError

KINDS = ("new image", "repeated image", "video", "media_id", "text", "cancelled stream", "short deadline")
WEIGHTS = (4, 3, 1, 2, 2, 1, 1)
RETRYABLE = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


def make_video(seed: int, frames: int = 12, size: int = 64) -> bytes:
    """A small H.264 MP4 of noise frames (PyAV), so videos go through the real decode path."""
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


def _image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (48 + seed % 40, 48 + seed % 31, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


def _chat(media: dict | None, text: str) -> list[dict]:
    content = ([media] if media else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)  # "ok", "expected", or a failure's status code
    by_kind: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)  # requests that succeeded
    failures: list[str] = field(default_factory=list)
    resent: int = 0  # media_ids gone with the cache, resent as bytes
    failure_times: list[float] = field(default_factory=list)  # time.monotonic() of each failure

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    def failed(self, retryable: bool) -> int:
        return sum(
            n
            for code, n in self.outcomes.items()
            if code not in ("ok", "expected") and (code in RETRYABLE) == retryable
        )


class SoakClients:
    def __init__(self, decoders: str, encoders: str, clients: int, until: float, max_requests: int, seed: int = 0):
        self.until = until
        self.max_requests = max_requests
        self.tally = Tally()
        self._lock = threading.Lock()
        self._media_ids: list[tuple[str, bytes]] = []
        self._repeated = [_image(seed * 1000 + i) for i in range(4)]
        self._video = make_video(seed)
        self._decoders, self._encoders = decoders, encoders
        self._threads = [
            threading.Thread(target=self._loop, args=(seed * 7919 + c,), daemon=True) for c in range(clients)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> Tally:
        for t in self._threads:
            t.join(timeout=300)
        return self.tally

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        with InternVLClient(self._decoders, encoder_target=self._encoders, timeout=60) as client:
            n = 0
            while time.monotonic() < self.until:
                with self._lock:
                    if self.tally.sent >= self.max_requests:
                        return
                kind = rng.choices(KINDS, WEIGHTS)[0]
                started = time.monotonic()
                outcome = self._one(client, kind, seed * 100_000 + n, rng)
                n += 1
                with self._lock:
                    self.tally.outcomes[outcome] += 1
                    self.tally.by_kind[kind] += 1
                    if outcome == "ok":
                        self.tally.latencies_s.append(time.monotonic() - started)

    def _one(self, client: InternVLClient, kind: str, seed: int, rng: random.Random) -> str:
        try:
            if kind == "cancelled stream":
                stream = client.stream(
                    _chat({"type": "image", "image": _image(seed)}, "Describe it."), max_new_tokens=32
                )
                next(stream)
                stream.close()  # leaving early cancels the call on the server
                return "expected"
            if kind == "short deadline":
                try:
                    client.generate(
                        _chat({"type": "image", "image": _image(seed)}, "Hi"), max_new_tokens=8, timeout=0.05
                    )
                except InternVLError as exc:
                    return "expected" if exc.code_name == "DEADLINE_EXCEEDED" else self._failed(kind, exc)
                return "ok"
            max_new_tokens = rng.choice((2, 4, 8))
            if kind == "media_id":
                media_id, data = self._media_id(client, seed, rng)
                try:
                    client.generate(
                        _chat({"type": "image", "media_id": media_id}, "And this?"), max_new_tokens=max_new_tokens
                    )
                except NotFoundError:  # the cache lost it (Redis restarted): send the bytes again
                    with self._lock:
                        self.tally.resent += 1
                    client.generate(_chat({"type": "image", "image": data}, "And this?"), max_new_tokens=max_new_tokens)
                return "ok"
            client.generate(self._request(kind, seed, rng), max_new_tokens=max_new_tokens)
            return "ok"
        except InternVLError as exc:
            return self._failed(kind, exc)
        except Exception as exc:  # noqa: BLE001 - anything else is a failure too, never a silent dead client
            return self._failed(kind, InternVLError(f"{type(exc).__name__}: {exc}", code=None), "CLIENT_ERROR")

    def _request(self, kind: str, seed: int, rng: random.Random) -> list[dict]:
        if kind == "new image":
            return _chat({"type": "image", "image": _image(seed)}, "Describe it.")
        if kind == "repeated image":
            return _chat({"type": "image", "image": rng.choice(self._repeated)}, "What is in it?")
        if kind == "video":
            return _chat({"type": "video", "video": self._video, "num_frames": 4}, "What happens?")
        return _chat(None, rng.choice(("Write a haiku.", "Say hello.", "Count to three.")))

    def _media_id(self, client: InternVLClient, seed: int, rng: random.Random) -> tuple[str, bytes]:
        """An id from an earlier Encode (a new one now and then), with its bytes."""
        with self._lock:
            known = list(self._media_ids)
        if not known or rng.random() < 0.2:
            data = _image(seed)
            (encoded,) = client.encode([data])
            with self._lock:
                self._media_ids.append((encoded.media_id, data))
            return encoded.media_id, data
        return rng.choice(known)

    def _failed(self, kind: str, exc: InternVLError, code: str | None = None) -> str:
        code = code or exc.code_name
        with self._lock:
            self.tally.failure_times.append(time.monotonic())
            if len(self.tally.failures) < 20:
                self.tally.failures.append(f"{kind}: {code}: {exc.details[:200]}")
        return code
