"""Video bytes -> sampled, normalised frames equal to transformers' InternVLVideoProcessor output.

Decoding happens in worker processes (video_pool.py, video_worker.py); this module validates the request,
picks the frames with InternVLVideoProcessor.sample_frames' rule, and turns the RGB frames into
pixel values with the same torchvision ops as the processor (resize each frame, then fused rescale+normalize).

Frame sampling: indices = arange(total/n/2, total, total/n).int() over the frames the file decodes to
(what the oracle counts). A clip with fewer frames than requested gives all its frames (transformers raises
there); `VideoFrames.indices` says which frames were used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass

import numpy as np
import torch

from internvl_serve.common.errors import InvalidMedia, ResourceExhausted
from internvl_serve.encoder.media.config import MediaLimits, VideoPreprocess
from internvl_serve.encoder.media.transforms import rescale_and_normalize, resize
from internvl_serve.encoder.media.video_pool import WORKER_STARTUP_TIMEOUT_S, RawVideo, VideoWorkerPool


@dataclass(frozen=True)
class VideoFrames:
    pixel_values: torch.Tensor  # float32 [num_frames, 3, H, W], normalised
    indices: tuple[int, ...]  # which decoded frames were sampled
    total_frames: int  # frames the file decodes to
    fps: float  # the stream's average frame rate (0.0 when unknown)
    width: int  # source frame size
    height: int
    codec: str
    container: str

    @property
    def num_frames(self) -> int:
        return self.pixel_values.shape[0]


def sample_indices(total_frames: int, num_frames: int, initial_shift: bool | float = True) -> list[int]:
    """InternVLVideoProcessor.sample_frames, computed with the same torch.arange (float32) so the rounding
    matches; with fewer frames than asked for, every frame."""
    if num_frames >= total_frames:
        return list(range(total_frames))
    shift = total_frames / num_frames / 2 if initial_shift is True else float(initial_shift)
    return torch.arange(shift, total_frames, total_frames / num_frames).int().tolist()


def frames_to_pixel_values(frames: list[np.ndarray], pp: VideoPreprocess) -> torch.Tensor:
    """RGB uint8 [H, W, 3] frames -> float32 [n, 3, h, w] (InternVLVideoProcessor._preprocess for one video)."""
    if len({f.shape for f in frames}) > 1:
        # A stream that changes resolution: transformers could not stack it; each frame is resized alone.
        return torch.cat([frames_to_pixel_values([f], pp) for f in frames])
    video = torch.from_numpy(np.stack(frames)).contiguous().permute(0, 3, 1, 2).contiguous()
    batch = video[None]  # transformers groups same-shape videos: [1, T, 3, H, W]
    if pp.do_resize:
        batch = resize(batch, pp.frame_height, pp.frame_width, pp.resample)
    out = rescale_and_normalize(
        batch,
        do_rescale=pp.do_rescale,
        rescale_factor=pp.rescale_factor,
        do_normalize=pp.do_normalize,
        image_mean=pp.image_mean,
        image_std=pp.image_std,
    )
    return out[0]


class VideoDecoder:
    """Decodes videos in a pool of crash-contained worker processes; use as a (async) context manager or
    call close(). `await decode(...)` runs off the event loop; `decode_sync` blocks the calling thread."""

    def __init__(
        self,
        preprocess: VideoPreprocess,
        limits: MediaLimits,
        *,
        workers: int,  # EncoderConfig.video_workers
        enable_test_hooks: bool = False,
        startup_timeout_s: float = WORKER_STARTUP_TIMEOUT_S,
    ):
        self.preprocess = preprocess
        self.limits = limits
        self._pool = VideoWorkerPool(
            workers,
            enable_test_hooks=enable_test_hooks,
            startup_timeout_s=startup_timeout_s,
            memory_limit_bytes=limits.video_worker_memory_bytes,
        )
        # One thread per worker: requests beyond that wait in the executor's queue, not in a thread.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="video-decode")

    @property
    def workers_replaced(self) -> int:
        return self._pool.replaced

    def resolve_num_frames(self, num_frames: int | None, limits: MediaLimits | None = None) -> int:
        """The frame count a request gets: 0/None means the checkpoint's default."""
        limits = limits or self.limits
        n = num_frames or self.preprocess.num_frames
        if n < 0:
            raise InvalidMedia(f"num_frames={n} is negative; send 0 for the default ({self.preprocess.num_frames})")
        if n > limits.max_num_frames:
            raise InvalidMedia(f"num_frames={n} is over the limit of {limits.max_num_frames} frames per video")
        return n

    def decode_sync(
        self,
        data: bytes,
        num_frames: int | None = 0,
        *,
        preprocess: VideoPreprocess | None = None,
        limits: MediaLimits | None = None,
    ) -> VideoFrames:
        pp = preprocess or self.preprocess
        limits = limits or self.limits
        n = self.resolve_num_frames(num_frames, limits)
        if not data:
            raise InvalidMedia("video data is empty; send the bytes of a video file (MP4, WebM, MKV, AVI)")
        if len(data) > limits.max_video_bytes:
            raise ResourceExhausted(f"video of {len(data)} bytes is over the {limits.max_video_bytes}-byte limit")
        raw: RawVideo = self._pool.run(
            data,
            limits.video_worker_limits(),
            lambda total: sample_indices(total, n, pp.initial_shift),
            timeout_s=limits.decode_timeout_s,
            max_frame_bytes=n * limits.max_video_pixels_per_frame * 3,
        )
        return VideoFrames(
            pixel_values=frames_to_pixel_values(raw.frames, pp),
            indices=tuple(raw.indices),
            total_frames=raw.total_frames,
            fps=raw.fps,
            width=raw.width,
            height=raw.height,
            codec=raw.codec,
            container=raw.container,
        )

    async def decode(self, data: bytes, num_frames: int | None = 0) -> VideoFrames:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.decode_sync, data, num_frames)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pool.close()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> VideoDecoder:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


def decode_video(
    data: bytes,
    num_frames: int | None,
    preprocess: VideoPreprocess,
    limits: MediaLimits,
    *,
    decoder: VideoDecoder | None = None,
) -> VideoFrames:
    """One video, blocking. Pass a long-lived `decoder` in a server; without one a single-worker pool is
    started and stopped for this call (a second or so of process start-up)."""
    if decoder is not None:
        return decoder.decode_sync(data, num_frames, preprocess=preprocess, limits=limits)
    with VideoDecoder(preprocess, limits, workers=1) as temporary:
        return temporary.decode_sync(data, num_frames)
