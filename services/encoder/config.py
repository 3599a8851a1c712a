"""EncoderConfig: the encoder service's settings. Each default is written once, on its field; the flags
and environment variables are derived from the fields (common/config_fields.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from internvl_serve.common.config_fields import add_config_arguments, config_from_args, nested, setting
from internvl_serve.common.embedding_cache import CacheSettings
from internvl_serve.common.placement import DTYPES, resolve_device, resolve_dtype
from internvl_serve.common.telemetry import ENCODER_SERVICE, TelemetrySettings
from internvl_serve.encoder.media.config import MediaLimits

MiB = 1024 * 1024


@dataclass(frozen=True)
class EncoderConfig:
    """Everything the encoder needs, passed down through constructors (never read deep inside)."""

    model: str = setting(help="checkpoint directory or hub id (-hf format)")
    port: int = setting(50051, "0 picks a free port", env="INTERNVL_ENCODER_PORT")
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 in containers)", env="INTERNVL_HOST")
    device: str = setting("auto", "auto (cuda when available), cpu, cuda, cuda:N", env="INTERNVL_DEVICE")
    dtype: str = setting(
        "auto", "auto: bfloat16 on GPU, float32 on CPU", env="INTERNVL_DTYPE", choices=("auto", *DTYPES)
    )
    max_batch_tiles: int = setting(32, "tiles per vision-tower batch")
    max_batch_wait_ms: float = setting(5.0, "how long a batch waits to fill")
    max_media_per_request: int = setting(16, "media items one Encode request may carry")
    num_threads: int = setting(
        0, "torch intra-op threads for the model (0: torch's default, one per core)", env="INTERNVL_NUM_THREADS"
    )
    video_workers: int = setting(2, "processes that decode videos (crash-contained)")
    cache: CacheSettings = nested(CacheSettings)
    limits: MediaLimits = nested(MediaLimits)
    # Requests carry encoded media (32 MiB images, 256 MiB videos by default); replies inline embeddings.
    max_receive_bytes: int = setting(
        512 * MiB, "largest gRPC request accepted, in MiB", flag="--max-receive-mb", scale=MiB
    )
    max_send_bytes: int = setting(1024 * MiB, "largest gRPC reply sent, in MiB", flag="--max-send-mb", scale=MiB)
    grace_s: float = setting(10.0, "SIGTERM: time in-flight requests get to finish")
    log_level: str = setting("INFO", "log level", env="INTERNVL_LOG_LEVEL")
    telemetry: TelemetrySettings = TelemetrySettings.off(ENCODER_SERVICE)  # from the OTEL_* environment

    def __post_init__(self) -> None:
        problems = []
        if self.num_threads < 0:
            problems.append(f"--num-threads must be >= 0, got {self.num_threads}")
        if self.dtype not in ("auto", *DTYPES):
            problems.append(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("max_batch_tiles", "max_media_per_request", "video_workers"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_batch_wait_ms < 0:
            problems.append(f"--max-batch-wait-ms must be >= 0, got {self.max_batch_wait_ms}")
        if self.max_receive_bytes < 1 or self.max_send_bytes < 1:
            problems.append("--max-receive-mb and --max-send-mb must be > 0")
        if self.grace_s < 0:
            problems.append(f"--grace-s must be >= 0, got {self.grace_s}")
        problems += self.cache.problems() + self.limits.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device())


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EncoderConfig)


def encoder_config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> EncoderConfig:
    """The config of `internvl-serve encoder ARGS`; telemetry settings from the OTEL_* environment."""
    return config_from_args(EncoderConfig, args, telemetry=TelemetrySettings.from_env(ENCODER_SERVICE, env))
