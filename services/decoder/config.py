"""DecoderConfig: the decoder service's settings. Each default is written once, on its field; the flags
and environment variables are derived from the fields (common/config_fields.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from internvl_serve.common.config_fields import add_config_arguments, comma_list, config_from_args, nested, setting
from internvl_serve.common.embedding_cache import CacheSettings
from internvl_serve.common.placement import DTYPES, resolve_device, resolve_dtype
from internvl_serve.common.telemetry import DECODER_SERVICE, TelemetrySettings

MiB = 1024 * 1024
DEFAULT_CPU_KV_CACHE_BYTES = 512 * MiB


@dataclass(frozen=True)
class DecoderConfig:
    """Everything the decoder needs, passed down through constructors (never read deep inside).

    KV cache size, in order of precedence: `num_kv_blocks` (exact), `kv_cache_bytes` (a budget), else on
    CUDA `gpu_memory_fraction` of the device's memory minus what the weights and activations use, and on
    CPU `DEFAULT_CPU_KV_CACHE_BYTES`.
    """

    model: str = setting(help="checkpoint directory or hub id (-hf format)")
    port: int = setting(50052, "0 picks a free port", env="INTERNVL_DECODER_PORT")
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 in containers)", env="INTERNVL_HOST")
    encoders: tuple[str, ...] = setting(
        (), "vision encoders, HOST:PORT[,HOST:PORT...]", flag="--encoder", env="INTERNVL_ENCODERS", parse=comma_list
    )
    # The encoders' embedding cache: media_id parts are read from it directly (cache.url, --redis-url).
    cache: CacheSettings = nested(CacheSettings)
    device: str = setting("auto", "auto (cuda when available), cpu, cuda, cuda:N", env="INTERNVL_DEVICE")
    dtype: str = setting(
        "auto", "auto: bfloat16 on GPU, float32 on CPU", env="INTERNVL_DTYPE", choices=("auto", *DTYPES)
    )
    num_threads: int = setting(
        0, "torch intra-op threads for the model (0: torch's default, one per core)", env="INTERNVL_NUM_THREADS"
    )
    block_size: int = setting(16, "tokens per KV-cache block")
    num_kv_blocks: int | None = setting(None, "exact number of KV blocks (overrides --kv-cache-mb)", parse=int)
    kv_cache_bytes: int | None = setting(
        None,
        "KV-cache budget in MiB (default: CUDA --gpu-memory-fraction of the device, CPU 512)",
        flag="--kv-cache-mb",
        scale=MiB,
        parse=float,
    )
    gpu_memory_fraction: float = setting(
        0.90, "CUDA without --kv-cache-mb: share of device memory for weights, activations and KV cache"
    )
    max_num_seqs: int = setting(64, "sequences decoded together in one step")
    max_tokens_per_step: int = setting(
        2048, "tokens per step (decodes + prefill chunks): long prompts are prefilled in chunks"
    )
    max_queue: int = setting(256, "waiting requests before RESOURCE_EXHAUSTED")
    enable_prefix_caching: bool = setting(
        True,
        "turn off automatic prefix caching (reuse of the KV blocks of earlier prompts and images)",
        flag="--no-prefix-caching",
    )
    default_max_new_tokens: int = setting(256, "used when a request sends max_new_tokens 0")
    max_media_per_request: int = setting(16, "media items over all messages of one request")
    max_context_len: int | None = setting(
        None, "prompt + generated tokens (default and maximum: the model's max_position_embeddings)", parse=int
    )
    # Requests carry media bytes (up to 16 items); replies are text.
    max_receive_bytes: int = setting(
        512 * MiB, "largest gRPC request accepted, in MiB", flag="--max-receive-mb", scale=MiB
    )
    max_send_bytes: int = setting(64 * MiB, "largest gRPC reply sent, in MiB", flag="--max-send-mb", scale=MiB)
    grace_s: float = setting(10.0, "SIGTERM: time in-flight requests get to finish")
    log_level: str = setting("INFO", "log level", env="INTERNVL_LOG_LEVEL")
    telemetry: TelemetrySettings = TelemetrySettings.off(DECODER_SERVICE)  # from the OTEL_* environment

    def __post_init__(self) -> None:
        problems = []
        if self.num_threads < 0:
            problems.append(f"--num-threads must be >= 0, got {self.num_threads}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            problems.append(f"--block-size must be a power of two >= 1, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            problems.append(f"--num-kv-blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_bytes is not None and self.kv_cache_bytes <= 0:
            problems.append(f"--kv-cache-mb must be > 0, got {self.kv_cache_bytes / MiB:g}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            problems.append(f"--gpu-memory-fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if self.max_num_seqs < 1:
            problems.append(f"--max-num-seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_tokens_per_step < self.max_num_seqs:
            problems.append(
                f"--max-tokens-per-step ({self.max_tokens_per_step}) must be >= --max-num-seqs "
                f"({self.max_num_seqs}) so every running sequence can decode in each step"
            )
        if self.max_queue < 1:
            problems.append(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.default_max_new_tokens < 1:
            problems.append(f"--default-max-new-tokens must be >= 1, got {self.default_max_new_tokens}")
        if self.max_media_per_request < 0:
            problems.append(f"--max-media-per-request must be >= 0, got {self.max_media_per_request}")
        if self.max_context_len is not None and self.max_context_len < 2:
            problems.append(f"--max-context-len must be >= 2, got {self.max_context_len}")
        if self.dtype not in ("auto", *DTYPES):
            problems.append(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_receive_bytes < 1 or self.max_send_bytes < 1:
            problems.append("--max-receive-mb and --max-send-mb must be > 0")
        problems += self.cache.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device())


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DecoderConfig)


def decoder_config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> DecoderConfig:
    """The config of `internvl-serve decoder ARGS`; telemetry settings from the OTEL_* environment."""
    return config_from_args(DecoderConfig, args, telemetry=TelemetrySettings.from_env(DECODER_SERVICE, env))
