"""DecoderConfig: the decoder service's settings. Each default is written once, on its field; the flags
and environment variables are derived from the fields (common/config_fields.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from internvl_serve.common.admission import max_in_flight_setting
from internvl_serve.common.config_fields import add_config_arguments, comma_list, config_from_args, nested, setting
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
from internvl_serve.common.telemetry import DECODER_SERVICE, TelemetrySettings
from internvl_serve.common.tls import EncoderLinkTls, ServerTls

DEFAULT_CPU_KV_CACHE_BYTES = 512 * MiB


@dataclass(frozen=True)
class DecoderConfig:
    """Everything the decoder needs, passed down through constructors (never read deep inside).

    KV cache size, in order of precedence: `num_kv_blocks` (exact), `kv_cache_bytes` (a budget), else on
    CUDA `gpu_memory_fraction` of the device's memory minus what the weights and activations use, and on
    CPU `DEFAULT_CPU_KV_CACHE_BYTES`.
    """

    model: str = model_setting()
    port: int = setting(50052, "0 picks a free port", env="INTERNVL_DECODER_PORT")
    host: str = host_setting()
    encoders: tuple[str, ...] = setting(
        (), "vision encoders, HOST:PORT[,HOST:PORT...]", flag="--encoder", env="INTERNVL_ENCODERS", parse=comma_list
    )
    # Calls to the encoders: a reply carries the embeddings of one media item (tens of MiB for big models).
    max_encoder_reply_bytes: int = setting(
        1024 * MiB, "largest Encode reply accepted from an encoder, in MiB", flag="--max-encoder-reply-mb", scale=MiB
    )
    encoder_attempts: int = setting(
        5, "Encode attempts per media item (gRPC retries UNAVAILABLE on another replica; at most 5)"
    )
    encoder_backoff_s: float = setting(0.1, "pause before the second Encode attempt, doubled before each later one")
    encoder_timeout_s: float = setting(
        120.0, "bound on one Encode call (waiting for an encoder to be up included) when the client sets no deadline"
    )
    encoder_max_concurrency: int = setting(
        128, "Encode calls in flight at once, over all encoders (more wait here, not in the encoders' queues)"
    )
    encoder_tls: EncoderLinkTls = nested(EncoderLinkTls)
    encoder_token: str | None = setting(
        None,
        "token sent to the encoders; prefer the INTERNVL_ENCODER_TOKEN variable (flags show in `ps`)",
        flag="--encoder-token",
        env="INTERNVL_ENCODER_TOKEN",
        secret=True,
    )
    # The encoders' embedding cache: media_id parts are read from it directly (cache.url, --redis-url).
    cache: CacheSettings = nested(CacheSettings)
    device: str = device_setting()
    dtype: str = dtype_setting()
    num_threads: int = num_threads_setting()
    quant: QuantSettings = nested(QuantSettings)
    tensor_parallel_size: int = setting(
        1,
        "split the language model over N ranks (processes the decoder starts: N GPUs from --device, or the "
        "CPU with gloo); the vision encoders stay data-parallel replicas",
        env="INTERNVL_TENSOR_PARALLEL_SIZE",
    )
    tp_timeout_s: float = setting(300.0, "tensor parallel: longest one collective waits for a peer rank")
    cuda_graphs: str = setting(
        "off",
        "on|off: replay CUDA graphs for decode steps (one per batch bucket, captured at warm-up; CUDA, one "
        "rank). Off by default until benchmarks/gpu_check.sh has shown it correct on a device",
        env="INTERNVL_CUDA_GRAPHS",
    )
    block_size: int = setting(16, "tokens per KV-cache block")
    num_kv_blocks: int | None = setting(None, "exact number of KV blocks (overrides --kv-cache-mb)", parse=int)
    kv_cache_bytes: int | None = setting(
        None,
        "KV-cache budget in MiB (default: CUDA --gpu-memory-fraction of the device, "
        f"CPU {DEFAULT_CPU_KV_CACHE_BYTES // MiB})",
        flag="--kv-cache-mb",
        scale=MiB,
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
    max_request_media_bytes: int = max_request_media_setting()
    max_receive_bytes: int | None = max_receive_setting()
    max_send_bytes: int = max_send_setting(64 * MiB)
    max_in_flight: int = max_in_flight_setting(512)
    grace_s: float = grace_setting()
    drain_notice_s: float = drain_notice_setting()
    metrics_port: int | None = metrics_port_setting()
    # The OpenAI-compatible HTTP API (decoder/http/); the same engine, tokens and TLS as the gRPC API.
    http_port: int | None = setting(
        None,
        "serve the OpenAI-compatible HTTP API on this port (0 picks a free port; default: off)",
        env="INTERNVL_HTTP_PORT",
        parse=int,
    )
    allowed_media_domains: tuple[str, ...] = setting(
        (),
        "HTTP API: hosts whose http(s) image/video URLs may be fetched, DOMAIN[,DOMAIN...] (default: none, "
        "data: URLs only); public addresses only, no redirects",
        env="INTERNVL_ALLOWED_MEDIA_DOMAINS",
        parse=comma_list,
    )
    media_fetch_timeout_s: float = setting(10.0, "HTTP API: time one media URL fetch may take in all")
    tls: ServerTls = nested(ServerTls)
    auth_tokens_file: str | None = auth_tokens_setting()
    log_level: str = log_level_setting()
    telemetry: TelemetrySettings = TelemetrySettings.off(DECODER_SERVICE)  # from the OTEL_* environment

    def __post_init__(self) -> None:
        problems = common_problems(self)
        if self.max_encoder_reply_bytes < 1:
            problems.append("--max-encoder-reply-mb must be > 0")
        if not 1 <= self.encoder_attempts <= 5:
            problems.append(f"--encoder-attempts must be 1-5 (gRPC's cap), got {self.encoder_attempts}")
        if self.encoder_max_concurrency < 1:
            problems.append(f"--encoder-max-concurrency must be >= 1, got {self.encoder_max_concurrency}")
        if self.encoder_timeout_s <= 0:
            problems.append(f"--encoder-timeout-s must be > 0, got {self.encoder_timeout_s}")
        problems += self.encoder_tls.problems()
        if self.encoder_backoff_s < 0:
            problems.append(f"--encoder-backoff-s must be >= 0, got {self.encoder_backoff_s}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            problems.append(f"--block-size must be a power of two >= 1, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            problems.append(f"--num-kv-blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_bytes is not None and self.kv_cache_bytes <= 0:
            problems.append(f"--kv-cache-mb must be > 0, got {self.kv_cache_bytes / MiB:g}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            problems.append(f"--gpu-memory-fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if self.tensor_parallel_size < 1:
            problems.append(f"--tensor-parallel-size must be >= 1, got {self.tensor_parallel_size}")
        if self.cuda_graphs not in ("on", "off"):
            problems.append(f"--cuda-graphs must be on or off, got {self.cuda_graphs!r}")
        elif self.cuda_graphs == "on" and self.tensor_parallel_size > 1:
            problems.append("--cuda-graphs on is not supported with --tensor-parallel-size > 1 yet")
        if self.tp_timeout_s <= 0:
            problems.append(f"--tp-timeout-s must be > 0, got {self.tp_timeout_s}")
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
        if self.http_port is not None and not 0 <= self.http_port < 65536:
            problems.append(f"--http-port must lie in [0, 65535], got {self.http_port}")
        if self.media_fetch_timeout_s <= 0:
            problems.append(f"--media-fetch-timeout-s must be > 0, got {self.media_fetch_timeout_s}")
        problems += self.cache.problems() + self.quant.problems()
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
