"""EncoderEngine: media in, projected embeddings out, through the cache, single flight and micro-batches.

No gRPC here: the servicer translates protos to these calls, so the same engine is testable directly.
Tracing: one "internvl.encode_media" span per item (Redis GET/SET, preprocess and vision spans below it;
a single-flight follower is marked and linked to the leader's span).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from dataclasses import dataclass

import torch
from opentelemetry import trace

from internvl_serve.checkpoint import fingerprint, open_checkpoint
from internvl_serve.common.embedding_blob import MEDIA_IMAGE, MEDIA_VIDEO, EncodedBlob
from internvl_serve.common.embedding_cache import EmbeddingCache, make_media_id
from internvl_serve.common.errors import InvalidArgument, NotFound, ResourceExhausted
from internvl_serve.common.logs import log_event
from internvl_serve.common.quantization import effective_quant
from internvl_serve.common.tenancy import DEFAULT_TENANT
from internvl_serve.encoder.batcher import MicroBatcher
from internvl_serve.encoder.config import EncoderConfig
from internvl_serve.encoder.media.config import load_preprocess
from internvl_serve.encoder.media.images import decode_image, image_to_tiles
from internvl_serve.encoder.media.video import VideoDecoder
from internvl_serve.encoder.metrics import EncoderMetrics
from internvl_serve.encoder.vision_model import VisionTowerWithProjector

log = logging.getLogger("internvl_serve.encoder")


@dataclass(frozen=True)
class ImageInput:
    data: bytes


@dataclass(frozen=True)
class VideoInput:
    data: bytes
    num_frames: int = 0  # 0: the checkpoint's default


@dataclass(frozen=True)
class MediaRef:
    media_id: str


MediaInput = ImageInput | VideoInput | MediaRef


@dataclass(frozen=True)
class EncodeOutcome:
    media_id: str
    blob: EncodedBlob
    cache_hit: bool
    in_cache: bool  # the id can be used later (stored now or found there)


class EncoderEngine:
    def __init__(
        self, config: EncoderConfig, tracer: trace.Tracer | None = None, metrics: EncoderMetrics | None = None
    ):
        self.config = config
        self.tracer = tracer or trace.NoOpTracer()
        self.metrics = metrics
        self.device = config.torch_device()
        self.dtype = config.torch_dtype()
        ckpt = open_checkpoint(config.model)
        state, report = ckpt.load("vision")
        self.model_name = ckpt.path.name
        self.model_fingerprint = fingerprint(state, ckpt.config.vision_config.to_dict(), ckpt.config.downsample_ratio)
        self.quant = effective_quant(config.quant, ckpt.quantization, str(ckpt.path))
        self.model = VisionTowerWithProjector.from_state(ckpt.config, state, self.dtype, self.device, self.quant)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        del state
        self.image_pp, self.video_pp, self.tokens_per_tile = load_preprocess(ckpt.path)
        self.cache = EmbeddingCache(config.cache, self.model_fingerprint, tracer=self.tracer)
        self.batcher = MicroBatcher(
            self._run_batch,
            config.max_batch_tiles,
            config.max_batch_wait_ms / 1000,
            tracer=self.tracer,
            on_batch=metrics.record_batch if metrics else None,
        )
        # Image decode and tiling are CPU work; keep them off the event loop.
        self._cpu = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="media")
        self.video = VideoDecoder(self.video_pp, config.limits, workers=config.video_workers)
        self._inflight: dict[str, asyncio.Future] = {}
        self._leader_spans: dict[str, trace.SpanContext] = {}  # single flight: who computes each key
        self.computed = 0  # media encoded by the model (not served from the cache)
        log_event(
            log,
            "encoder_loaded",
            model=str(ckpt.path),
            layout=ckpt.layout,
            tensors=report.tensors_read,
            parameters=self.num_parameters,
            device=str(self.device),
            dtype=str(self.dtype),
            fingerprint=self.model_fingerprint,
            quantization=self.quant.describe(),
        )

    async def start(self) -> None:
        self.batcher.start()
        h, w = self.image_pp.tile_size
        warm = torch.zeros(1, 3, h, w)
        await asyncio.get_running_loop().run_in_executor(None, self._run_batch, warm)

    async def close(self) -> None:
        await self.batcher.close()
        self.video.close()
        self._cpu.shutdown(wait=False, cancel_futures=True)
        await self.cache.close()

    def _run_batch(self, tiles: torch.Tensor) -> torch.Tensor:
        out = self.model(tiles.to(self.device, self.dtype))
        return out.cpu()

    # --- fingerprints and ids -------------------------------------------------------------------------

    def _preprocess_fingerprint(self, item: ImageInput | VideoInput) -> str:
        h = hashlib.blake2b(digest_size=8)
        if isinstance(item, ImageInput):
            h.update(f"image:{self.image_pp.fingerprint()}".encode())
        else:
            h.update(f"video:{self.video_pp.fingerprint(self._num_frames(item))}".encode())
        h.update(f":{self.dtype}:{self.tokens_per_tile}".encode())
        if self.quant.enabled:  # quantized embeddings differ: never the same cache entries
            h.update(f":{self.quant.describe()}".encode())
        return h.hexdigest()

    def _num_frames(self, item: VideoInput) -> int:
        n = item.num_frames or self.video_pp.num_frames
        if n > self.config.limits.max_num_frames:
            raise InvalidArgument(
                f"num_frames={n} is over the limit of {self.config.limits.max_num_frames} frames per video"
            )
        return n

    # --- encoding ---------------------------------------------------------------------------------------

    def validate(self, items: list[MediaInput]) -> None:
        if not items:
            raise InvalidArgument("no media: send at least one image, video or media_id")
        if len(items) > self.config.max_media_per_request:
            raise InvalidArgument(
                f"{len(items)} media items in one request; the limit is {self.config.max_media_per_request} "
                "(split the request)"
            )
        limits = self.config.limits
        total = sum(len(item.data) for item in items if not isinstance(item, MediaRef))
        if total > self.config.max_request_media_bytes:
            raise ResourceExhausted(
                f"the request carries {total} media bytes; the limit is {self.config.max_request_media_bytes} "
                "(--max-request-media-mb): send fewer or smaller media per request"
            )
        for i, item in enumerate(items):
            if isinstance(item, ImageInput) and len(item.data) > limits.max_image_bytes:
                raise ResourceExhausted(
                    f"media[{i}]: image of {len(item.data)} bytes is over the {limits.max_image_bytes}-byte limit"
                )
            if isinstance(item, VideoInput) and len(item.data) > limits.max_video_bytes:
                raise ResourceExhausted(
                    f"media[{i}]: video of {len(item.data)} bytes is over the {limits.max_video_bytes}-byte limit"
                )

    async def encode(self, items: list[MediaInput], tenant: str = DEFAULT_TENANT) -> list[EncodeOutcome]:
        """`tenant`: whose media this is; cache entries and media_ids are scoped to it (embedding_cache.py)."""
        self.validate(items)
        tasks = [asyncio.ensure_future(self._encode_one(i, item, tenant)) for i, item in enumerate(items)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:  # one bad item fails the request; do not leave the others running
                t.cancel()

    @property
    def num_inflight(self) -> int:
        return len(self._inflight)

    async def _encode_one(self, index: int, item: MediaInput, tenant: str) -> EncodeOutcome:
        attributes = _media_attributes(index, item)
        with self.tracer.start_as_current_span("internvl.encode_media", attributes=attributes) as span:
            outcome = await self._encode_item(index, item, tenant)
            blob = outcome.blob
            span.set_attributes(
                {
                    "internvl.media.type": "image" if blob.media_type == MEDIA_IMAGE else "video",
                    "internvl.media.num_tiles": blob.num_tiles,
                    "internvl.media.num_frames": blob.num_frames,
                    "internvl.media.num_tokens": blob.embeddings.shape[0],
                    "internvl.media.cache_hit": outcome.cache_hit,
                    "internvl.media.stored": outcome.in_cache,
                }
            )
        if self.metrics is not None:
            self.metrics.record_media("image" if blob.media_type == MEDIA_IMAGE else "video", outcome.cache_hit)
        return outcome

    async def _encode_item(self, index: int, item: MediaInput, tenant: str) -> EncodeOutcome:
        try:
            if isinstance(item, MediaRef):
                return await self._resolve(item.media_id, tenant)
            preprocess_fp = self._preprocess_fingerprint(item)
            content_hash = hashlib.sha256(item.data).hexdigest()
            media_id = make_media_id(preprocess_fp, content_hash)
            key = self.cache.key(preprocess_fp, content_hash, tenant)
            blob = await self.cache.get(key)
            if blob is not None:
                return EncodeOutcome(media_id, blob, cache_hit=True, in_cache=True)
            blob, stored = await self._single_flight(key, item)
            return EncodeOutcome(media_id, blob, cache_hit=False, in_cache=stored)
        except (InvalidArgument, NotFound, ResourceExhausted) as exc:
            raise type(exc)(f"media[{index}]: {exc}") from None

    async def _resolve(self, media_id: str, tenant: str) -> EncodeOutcome:
        key = self.cache.key_for_media_id(media_id, tenant)
        if key is None:
            raise InvalidArgument(f"media_id {media_id[:80]!r} is not an id this service issued")
        blob = await self.cache.get(key)
        if blob is None:
            raise NotFound(
                f"media_id {media_id} is unknown or expired (or the cache is unavailable); send the media bytes again"
            )
        return EncodeOutcome(media_id, blob, cache_hit=True, in_cache=True)

    async def _single_flight(self, key: str, item: ImageInput | VideoInput) -> tuple[EncodedBlob, bool]:
        """Concurrent requests for the same content share one computation.

        The computation is its own task, so a caller that goes away (cancelled, or failed on another
        item) neither cancels it for the others nor loses the result: it still lands in the cache.
        """
        task = self._inflight.get(key)
        span = trace.get_current_span()
        if task is None:
            task = asyncio.get_running_loop().create_task(self._compute_and_store(key, item))
            self._inflight[key] = task
            self._leader_spans[key] = span.get_span_context()
            task.add_done_callback(lambda t: self._finished(key, t))
            span.set_attribute("internvl.single_flight", "leader")
        else:  # the leader's span shows the decode, vision and store work this caller waits for
            span.set_attribute("internvl.single_flight", "follower")
            leader = self._leader_spans.get(key)
            if leader is not None and leader.is_valid:
                span.add_link(leader, {"internvl.link": "single_flight_leader"})
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task) -> None:
        self._inflight.pop(key, None)
        self._leader_spans.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so no "never retrieved" warning when every caller left

    async def _compute_and_store(self, key: str, item: ImageInput | VideoInput) -> tuple[EncodedBlob, bool]:
        blob = await self._compute(item)
        return blob, await self.cache.put(key, blob)

    async def _compute(self, item: ImageInput | VideoInput) -> EncodedBlob:
        loop = asyncio.get_running_loop()
        kind = "image" if isinstance(item, ImageInput) else "video"
        with self.tracer.start_as_current_span("internvl.preprocess", attributes={"internvl.media.type": kind}) as span:
            if isinstance(item, ImageInput):
                tiles = await loop.run_in_executor(self._cpu, self._image_tiles, item.data)
                media_type, frames = MEDIA_IMAGE, 0
            else:
                decoded = await self.video.decode(item.data, self._num_frames(item))
                tiles, media_type, frames = decoded.pixel_values, MEDIA_VIDEO, decoded.pixel_values.shape[0]
            span.set_attributes({"internvl.media.num_tiles": tiles.shape[0], "internvl.media.num_frames": frames})
        attributes = {"internvl.vision.tiles": tiles.shape[0]}
        with self.tracer.start_as_current_span("internvl.vision_encode", attributes=attributes):
            out = await self.batcher.submit(tiles)
        self.computed += 1
        emb = out.reshape(-1, out.shape[-1])
        return EncodedBlob(emb, media_type, num_tiles=tiles.shape[0], num_frames=frames, tokens_per_tile=out.shape[1])

    def _image_tiles(self, data: bytes) -> torch.Tensor:
        return image_to_tiles(decode_image(data, self.config.limits), self.image_pp)


def _media_attributes(index: int, item: MediaInput) -> dict[str, object]:
    if isinstance(item, MediaRef):
        return {"internvl.media.index": index, "internvl.media.source": "media_id"}
    kind = "image" if isinstance(item, ImageInput) else "video"
    return {
        "internvl.media.index": index,
        "internvl.media.source": kind,
        "internvl.media.type": kind,
        "internvl.media.bytes": len(item.data),
    }
