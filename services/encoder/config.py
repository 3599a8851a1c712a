"""EncoderConfig: the encoder service's settings, built from flags and environment in one place."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import torch

from internvl_serve.common.placement import DTYPES, resolve_device, resolve_dtype

from internvl_serve.common.embedding_cache import CacheSettings
from internvl_serve.encoder.media.config import MediaLimits

MiB = 1024 * 1024


@dataclass(frozen=True)
class EncoderConfig:
    model: str
    port: int = 50051
    host: str = "127.0.0.1"
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    max_batch_tiles: int = 32
    max_batch_wait_ms: float = 5.0
    max_media_per_request: int = 16
    video_workers: int = 2
    cache: CacheSettings = field(default_factory=lambda: CacheSettings(url=None))
    limits: MediaLimits = field(default_factory=MediaLimits)
    max_receive_bytes: int = 512 * MiB
    max_send_bytes: int = 1024 * MiB
    grace_s: float = 10.0
    log_level: str = "INFO"

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device())


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--model", required=True, help="checkpoint directory or hub id (-hf format)")
    p.add_argument("--port", type=int, default=int(env("INTERNVL_ENCODER_PORT", "50051")), help="0 picks a free port")
    p.add_argument("--host", default=env("INTERNVL_HOST", "127.0.0.1"), help="address to listen on (0.0.0.0 in containers)")
    p.add_argument("--redis-url", default=env("INTERNVL_REDIS_URL"), help="redis://host:port/db; omit to run without a cache")
    p.add_argument("--device", default=env("INTERNVL_DEVICE", "auto"), help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=env("INTERNVL_DTYPE", "auto"), choices=["auto", *DTYPES])
    p.add_argument("--max-batch-tiles", type=int, default=32, help="tiles per vision-tower batch")
    p.add_argument("--max-batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-media-per-request", type=int, default=16)
    p.add_argument("--video-workers", type=int, default=2, help="processes that decode videos (crash-contained)")
    p.add_argument("--cache-ttl-s", type=int, default=86_400, help="TTL of every cache entry")
    p.add_argument("--redis-timeout-s", type=float, default=0.5, help="bound on each Redis connect and command")
    p.add_argument("--max-image-pixels", type=int, default=64_000_000, help="decompression-bomb guard (header check)")
    p.add_argument("--max-image-side", type=int, default=32_768, help="longest accepted image side in pixels")
    p.add_argument("--max-image-mb", type=float, default=32, help="largest accepted image file")
    p.add_argument("--max-video-mb", type=float, default=256, help="largest accepted video file")
    p.add_argument("--max-num-frames", type=int, default=32, help="most frames one request may sample from a video")
    p.add_argument("--video-decode-timeout-s", type=float, default=60.0, help="a slower video decode is killed")
    p.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM: time in-flight requests get to finish")
    p.add_argument("--log-level", default=env("INTERNVL_LOG_LEVEL", "INFO"))


def encoder_config_from_args(args: argparse.Namespace) -> EncoderConfig:
    return EncoderConfig(
        model=args.model,
        port=args.port,
        host=args.host,
        device=args.device,
        dtype=args.dtype,
        max_batch_tiles=args.max_batch_tiles,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_media_per_request=args.max_media_per_request,
        video_workers=args.video_workers,
        cache=CacheSettings(
            url=args.redis_url,
            ttl_s=args.cache_ttl_s,
            connect_timeout_s=args.redis_timeout_s,
            op_timeout_s=args.redis_timeout_s,
        ),
        limits=MediaLimits(
            max_image_pixels=args.max_image_pixels,
            max_image_side=args.max_image_side,
            max_image_bytes=int(args.max_image_mb * MiB),
            max_video_bytes=int(args.max_video_mb * MiB),
            max_num_frames=args.max_num_frames,
            decode_timeout_s=args.video_decode_timeout_s,
        ),
        grace_s=args.grace_s,
        log_level=args.log_level,
    )
