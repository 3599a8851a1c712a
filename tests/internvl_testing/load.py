"""Concurrent image-chat load against a decoder, for the fault tests: N client threads each send requests
until told to stop, and every outcome is kept (status code and message), so a test can assert that none
failed while it kills or drains a server underneath."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_testing.media import image_bytes, noise_image


def image_chat(seed: int, max_new_tokens: int = 4) -> pb.GenerateRequest:
    """A chat with an image no other seed has: its Encode call reaches an encoder (no cache hit)."""
    png = image_bytes(noise_image(40 + seed % 23, 40 + seed % 17, 10_000 + seed), "PNG")
    part = pb.Part(media=media_pb2.Media(image=media_pb2.Image(data=png)))
    message = pb.Message(role="user", content=[part, pb.Part(text="Describe it.")])
    return pb.GenerateRequest(messages=[message], sampling=pb.SamplingParams(max_new_tokens=max_new_tokens))


@dataclass
class LoadResult:
    codes: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    @property
    def failed(self) -> int:
        return self.sent - self.codes[grpc.StatusCode.OK.name]


class ChatLoad:
    """`clients` threads sending image chats to `address` until stop(); `requests_each` bounds each."""

    def __init__(self, address: str, clients: int = 16, requests_each: int = 1000, seed0: int = 0, timeout_s=60.0):
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.GenerationServiceStub(self._channel)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.result = LoadResult()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [
            self._pool.submit(self._client, seed0 + c * 100_000, requests_each, timeout_s) for c in range(clients)
        ]

    def _client(self, seed: int, n: int, timeout_s: float) -> None:
        for i in range(n):
            if self._stop.is_set():
                return
            try:
                self._stub.Generate(image_chat(seed + i), timeout=timeout_s)
                code = grpc.StatusCode.OK.name
            except grpc.RpcError as exc:
                code = exc.code().name
                with self._lock:
                    self.result.failures.append(f"{code}: {exc.details()}")
            with self._lock:
                self.result.codes[code] += 1

    def wait_sent(self, n: int, timeout_s: float = 120.0) -> None:
        """Until `n` requests in all have finished."""
        deadline = time.monotonic() + timeout_s
        while self.result.sent < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.result.sent < n:
            raise TimeoutError(f"only {self.result.sent} of {n} requests finished in {timeout_s:.0f}s")

    def finish(self) -> LoadResult:
        """Stop sending, wait for the calls in flight, close; the outcomes."""
        self._stop.set()
        for f in self._futures:
            f.result(timeout=300)
        self._pool.shutdown()
        self._channel.close()
        return self.result
