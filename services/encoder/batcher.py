"""Micro-batching: tiles from concurrent requests go through the vision tower together.

A batch closes when it holds `max_tiles` tiles or `max_wait_s` after its first tile arrived, whichever is
first. A request with more tiles than a batch holds is split across batches. The model runs in one
worker thread, so the event loop keeps accepting requests (and filling the next batch) meanwhile.
Every tile is encoded independently, so batched results equal unbatched ones.

Tracing: each batch is a span ("internvl.vision_batch") under the span that submitted its first tiles,
linked to the spans of the other requests sharing it; `on_batch(tiles, requests, seconds)` feeds metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from opentelemetry import trace


@dataclass
class _Job:
    tiles: torch.Tensor
    future: asyncio.Future
    span_context: trace.SpanContext = trace.INVALID_SPAN_CONTEXT  # the submitter's span
    next_tile: int = 0
    outputs: list[torch.Tensor] = field(default_factory=list)
    done_tiles: int = 0


@dataclass
class BatcherStats:
    batches: int = 0
    tiles: int = 0
    max_batch_tiles: int = 0

    @property
    def mean_batch_tiles(self) -> float:
        return self.tiles / self.batches if self.batches else 0.0


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        max_tiles: int,
        max_wait_s: float,
        *,
        tracer: trace.Tracer | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ):
        if max_tiles < 1:
            raise ValueError("max_tiles must be >= 1")
        self._run_batch = run_batch
        self.max_tiles = max_tiles
        self.max_wait_s = max_wait_s
        self.stats = BatcherStats()
        self._tracer = tracer or trace.NoOpTracer()
        self._on_batch = on_batch
        self._jobs: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vision")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("encoder is shutting down"))
        self._executor.shutdown(wait=True)

    @property
    def num_waiting(self) -> int:
        """Requests with tiles not yet in a batch."""
        return len(self._jobs)

    async def submit(self, tiles: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> the model's output for those tiles, [n, tokens, hidden]."""
        if tiles.shape[0] == 0:
            raise ValueError("no tiles")
        job = _Job(tiles, asyncio.get_running_loop().create_future(), trace.get_current_span().get_span_context())
        self._jobs.append(job)
        self._wakeup.set()
        return await job.future

    def _take_batch(self) -> list[tuple[_Job, int, int]]:
        """Pieces (job, start, stop) filling at most max_tiles, skipping cancelled jobs."""
        pieces, room = [], self.max_tiles
        while self._jobs and room:
            job = self._jobs[0]
            if job.future.done():  # the caller went away
                self._jobs.popleft()
                continue
            start = job.next_tile
            stop = min(job.tiles.shape[0], start + room)
            pieces.append((job, start, stop))
            job.next_tile = stop
            room -= stop - start
            if stop == job.tiles.shape[0]:
                self._jobs.popleft()
        return pieces

    def _pending_tiles(self) -> int:
        return sum(j.tiles.shape[0] - j.next_tile for j in self._jobs if not j.future.done())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while self._pending_tiles() < self.max_tiles and loop.time() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            pieces = self._take_batch()
            if not pieces:
                continue
            batch = torch.cat([job.tiles[start:stop] for job, start, stop in pieces])
            started = time.perf_counter()
            with self._batch_span(pieces, batch.shape[0]) as span:
                try:
                    out = await loop.run_in_executor(self._executor, self._run_batch, batch)
                except Exception as exc:  # a failed batch fails its requests, not the batcher
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                    for job, _, _ in pieces:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
            if self._on_batch is not None:
                self._on_batch(batch.shape[0], len(pieces), time.perf_counter() - started)
            self.stats.batches += 1
            self.stats.tiles += batch.shape[0]
            self.stats.max_batch_tiles = max(self.stats.max_batch_tiles, batch.shape[0])
            offset = 0
            for job, start, stop in pieces:
                n = stop - start
                job.outputs.append(out[offset : offset + n])
                offset += n
                job.done_tiles += n
                if job.done_tiles == job.tiles.shape[0] and not job.future.done():
                    job.future.set_result(torch.cat(job.outputs) if len(job.outputs) > 1 else job.outputs[0])

    def _batch_span(self, pieces: list[tuple[_Job, int, int]], num_tiles: int):
        """A span under the first request's span, linked to the other requests' spans (the batch is shared)."""
        first = pieces[0][0].span_context
        parent = trace.set_span_in_context(trace.NonRecordingSpan(first)) if first.is_valid else None
        links = [trace.Link(job.span_context) for job, _, _ in pieces[1:] if job.span_context.is_valid]
        return self._tracer.start_as_current_span(
            "internvl.vision_batch",
            context=parent,
            links=links,
            attributes={
                "internvl.vision.batch_tiles": num_tiles,
                "internvl.vision.batch_requests": len(pieces),
                "internvl.vision.max_batch_tiles": self.max_tiles,
            },
        )
