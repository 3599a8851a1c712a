"""The encoder's OpenTelemetry metrics (RPC counts and durations come from the server interceptor).

Counters that the engine already keeps (cache hits, misses, errors, ...) are observed when a reader
collects, so the request path pays nothing for them; the rest are recorded where they happen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

# Cache outcomes from CacheStats: metric name suffix -> (stats field, description)
_CACHE_COUNTERS = {
    "hits": ("hits", "Embedding-cache lookups answered from Redis"),
    "misses": ("misses", "Embedding-cache lookups that found nothing usable (corrupt values included)"),
    "errors": ("errors", "Redis calls that failed or timed out (the request was computed and answered)"),
    "corrupt": ("corrupt", "Cached values that failed a check (magic, version, sizes, checksum)"),
    "writes": ("writes", "Embeddings stored in Redis"),
    "skipped": ("skipped", "Redis calls not attempted during the back-off after an error"),
}


class EncoderMetrics:
    """Instruments of one encoder. `engine()` returns the EncoderEngine once loaded (None before)."""

    def __init__(self, meter: Meter, engine: Callable[[], Any]):
        self._engine = engine
        self.media = meter.create_counter(
            "internvl.encoder.media",
            unit="{media}",
            description="Media items encoded, by internvl.media.type and internvl.media.cache_hit",
        )
        self.tiles = meter.create_counter(
            "internvl.encoder.tiles",
            unit="{tile}",
            description="Tiles run through the vision tower (image tiles and video frames; cache hits not included)",
        )
        self.batch_requests = meter.create_histogram(
            "internvl.encoder.batch.requests",
            unit="{request}",
            description="Media items (requests) sharing one vision-tower batch",
            explicit_bucket_boundaries_advisory=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32],
        )
        self.batch_tiles = meter.create_histogram(
            "internvl.encoder.batch.tiles",
            unit="{tile}",
            description="Tiles per vision-tower batch",
            explicit_bucket_boundaries_advisory=[1, 2, 4, 8, 13, 16, 24, 32, 48, 64, 96, 128],
        )
        self.batch_duration = meter.create_histogram(
            "internvl.encoder.batch.duration",
            unit="s",
            description="Vision tower + projector time per batch",
            explicit_bucket_boundaries_advisory=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        )
        for suffix, (field, description) in _CACHE_COUNTERS.items():
            meter.create_observable_counter(
                f"internvl.encoder.cache.{suffix}",
                [self._cache_callback(field)],
                unit="{operation}",
                description=description,
            )
        meter.create_observable_gauge(
            "internvl.encoder.batch.queue",
            [self._queue],
            unit="{request}",
            description="Requests waiting for the vision tower",
        )
        meter.create_observable_gauge(
            "internvl.encoder.inflight",
            [self._inflight],
            unit="{media}",
            description="Distinct media being computed (single flight)",
        )

    def record_batch(self, tiles: int, requests: int, seconds: float) -> None:
        self.tiles.add(tiles)
        self.batch_tiles.record(tiles)
        self.batch_requests.record(requests)
        self.batch_duration.record(seconds)

    def record_media(self, media_type: str, cache_hit: bool) -> None:
        self.media.add(1, {"internvl.media.type": media_type, "internvl.media.cache_hit": cache_hit})

    def _cache_callback(self, field: str):
        def observe(options: CallbackOptions):
            engine = self._engine()
            if engine is None or not engine.cache.enabled:
                return []
            return [Observation(getattr(engine.cache.stats, field))]

        return observe

    def _queue(self, options: CallbackOptions):
        engine = self._engine()
        return [] if engine is None else [Observation(engine.batcher.num_waiting)]

    def _inflight(self, options: CallbackOptions):
        engine = self._engine()
        return [] if engine is None else [Observation(engine.num_inflight)]
