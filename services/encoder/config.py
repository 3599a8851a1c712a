"""EncoderConfig: the encoder service's settings. Each default is written once, on its field; the flags
and environment variables are derived from the fields (common/config_fields.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from internvl_serve.common.admission import max_in_flight_setting
from internvl_serve.common.config_fields import add_config_arguments, config_from_args, nested, setting
from internvl_serve.common.embedding_cache import CacheSettings
from internvl_serve.common.placement import resolve_device, resolve_dtype
from internvl_serve.common.quantization import QuantSettings
from internvl_serve.common.security import auth_tokens_setting
from internvl_serve.common.service_settings import (
    MiB,
    common_problems,
    device_setting,
    drain_notice_setting,
    dtype_setting,
    grace_setting,
    host_setting,
    log_level_setting,
    max_receive_setting,
    max_request_media_setting,
    max_send_setting,
    metrics_port_setting,
    model_setting,
    num_threads_setting,
)
from internvl_serve.common.telemetry import ENCODER_SERVICE, TelemetrySettings
from internvl_serve.common.tls import ServerTls
from internvl_serve.encoder.media.config import MediaLimits


@dataclass(frozen=True)
class EncoderConfig:
    """Everything the encoder needs, passed down through constructors (never read deep inside)."""

    model: str = model_setting()
    port: int = setting(50051, "0 picks a free port", env="INTERNVL_ENCODER_PORT")
    host: str = host_setting()
    device: str = device_setting()
    dtype: str = dtype_setting()
    max_batch_tiles: int = setting(32, "tiles per vision-tower batch")
    max_batch_wait_ms: float = setting(5.0, "how long a batch waits to fill")
    max_media_per_request: int = setting(16, "media items one Encode request may carry")
    num_threads: int = num_threads_setting()
    quant: QuantSettings = nested(QuantSettings)
    video_workers: int = setting(2, "processes that decode videos (crash-contained)")
    cache: CacheSettings = nested(CacheSettings)
    limits: MediaLimits = nested(MediaLimits)
    # Requests carry encoded media (32 MiB images, 256 MiB videos by default); replies inline embeddings.
    max_request_media_bytes: int = max_request_media_setting()
    max_receive_bytes: int | None = max_receive_setting()
    max_send_bytes: int = max_send_setting(1024 * MiB)
    max_in_flight: int = max_in_flight_setting(256)  # the decoders send one Encode call per media item
    grace_s: float = grace_setting()
    drain_notice_s: float = drain_notice_setting()
    metrics_port: int | None = metrics_port_setting()
    max_connection_age_s: float = setting(
        300.0,
        "close each decoder connection after this long (calls on it get 60 s more), so decoders re-resolve "
        "a DNS target and reach encoder replicas added since; 0 = never",
    )
    tls: ServerTls = nested(ServerTls)
    auth_tokens_file: str | None = auth_tokens_setting()
    log_level: str = log_level_setting()
    telemetry: TelemetrySettings = TelemetrySettings.off(ENCODER_SERVICE)  # from the OTEL_* environment

    def __post_init__(self) -> None:
        problems = common_problems(self)
        if self.max_connection_age_s < 0:
            problems.append(f"--max-connection-age-s must be >= 0 (0 = never), got {self.max_connection_age_s}")
        for name in ("max_batch_tiles", "max_media_per_request", "video_workers"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_batch_wait_ms < 0:
            problems.append(f"--max-batch-wait-ms must be >= 0, got {self.max_batch_wait_ms}")
        problems += self.cache.problems() + self.limits.problems() + self.quant.problems()
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
