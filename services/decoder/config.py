"""DecoderConfig: the decoder service's settings, built from flags and environment in one place."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

from internvl_serve.common.placement import DTYPES, resolve_device, resolve_dtype

MiB = 1024 * 1024



@dataclass(frozen=True)
class DecoderConfig:
    """Everything the decoder needs, passed down through constructors (never read deep inside).

    KV cache size, in order of precedence: `num_kv_blocks` (exact), `kv_cache_bytes` (a budget), else on
    CUDA `gpu_memory_fraction` of the device's memory minus what the weights and activations use, and on
    CPU `DEFAULT_CPU_KV_CACHE_BYTES`.
    """

    model: str  # checkpoint directory or hub id (-hf format)
    port: int = 50052
    host: str = "127.0.0.1"
    encoders: tuple[str, ...] = ()  # HOST:PORT of each vision encoder (the gRPC layer's concern)
    redis_url: str | None = None  # the encoders' embedding cache: media_id parts are read from it directly
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    block_size: int = 16  # tokens per KV-cache block
    num_kv_blocks: int | None = None  # exact number of KV blocks (overrides the byte budget)
    kv_cache_bytes: int | None = None  # KV-cache memory budget in bytes (--kv-cache-mb)
    gpu_memory_fraction: float = 0.90  # CUDA, no explicit budget: share of device memory for weights+cache
    max_num_seqs: int = 64  # sequences in the running batch at once
    max_tokens_per_step: int = 2048  # token budget of one step: decodes + prefill chunks (chunked prefill)
    max_queue: int = 256  # waiting requests; a full queue answers RESOURCE_EXHAUSTED
    default_max_new_tokens: int = 256  # SamplingParams.max_new_tokens = 0 means this
    max_media_per_request: int = 16  # media items over all messages of one request
    max_context_len: int | None = None  # prompt + generated tokens; None: text max_position_embeddings
    grace_s: float = 10.0  # SIGTERM: time in-flight requests get to finish
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = []
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
        if problems:
            raise ValueError("; ".join(problems))

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device())


DEFAULT_CPU_KV_CACHE_BYTES = 512 * MiB


def _encoders(value: str | None) -> tuple[str, ...]:
    return tuple(a.strip() for a in (value or "").split(",") if a.strip())


def add_decoder_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--model", required=True, help="checkpoint directory or hub id (-hf format)")
    p.add_argument("--port", type=int, default=int(env("INTERNVL_DECODER_PORT", "50052")), help="0 picks a free port")
    p.add_argument("--host", default=env("INTERNVL_HOST", "127.0.0.1"), help="address to listen on (0.0.0.0 in containers)")
    p.add_argument("--encoder", default=env("INTERNVL_ENCODERS", ""), help="vision encoders, HOST:PORT[,HOST:PORT...]")
    p.add_argument("--redis-url", default=env("INTERNVL_REDIS_URL"), help="the encoders' embedding cache (redis://host:port/db): media_id parts are read from it directly, "
                   "without a round trip through an encoder (optional)")
    p.add_argument("--device", default=env("INTERNVL_DEVICE", "auto"), help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=env("INTERNVL_DTYPE", "auto"), choices=["auto", *DTYPES])
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    p.add_argument("--kv-cache-mb", type=float, default=None,
                   help="KV-cache budget in MiB (default: CUDA --gpu-memory-fraction of the device, CPU 512)")
    p.add_argument("--num-kv-blocks", type=int, default=None, help="exact number of KV blocks (overrides --kv-cache-mb)")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.90,
                   help="CUDA without --kv-cache-mb: share of device memory for weights, activations and KV cache")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together in one step")
    p.add_argument("--max-tokens-per-step", type=int, default=2048,
                   help="tokens per step (decodes + prefill chunks): long prompts are prefilled in chunks")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before RESOURCE_EXHAUSTED")
    p.add_argument("--default-max-new-tokens", type=int, default=256, help="used when a request sends 0")
    p.add_argument("--max-media-per-request", type=int, default=16)
    p.add_argument("--max-context-len", type=int, default=None,
                   help="prompt + generated tokens (default and maximum: the model's max_position_embeddings)")
    p.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM: time in-flight requests get to finish")
    p.add_argument("--log-level", default=env("INTERNVL_LOG_LEVEL", "INFO"))


def decoder_config_from_args(args: argparse.Namespace) -> DecoderConfig:
    return DecoderConfig(
        model=args.model,
        port=args.port,
        host=args.host,
        encoders=_encoders(args.encoder),
        redis_url=args.redis_url,
        device=args.device,
        dtype=args.dtype,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        kv_cache_bytes=None if args.kv_cache_mb is None else int(args.kv_cache_mb * MiB),
        gpu_memory_fraction=args.gpu_memory_fraction,
        max_num_seqs=args.max_num_seqs,
        max_tokens_per_step=args.max_tokens_per_step,
        max_queue=args.max_queue,
        default_max_new_tokens=args.default_max_new_tokens,
        max_media_per_request=args.max_media_per_request,
        max_context_len=args.max_context_len,
        grace_s=args.grace_s,
        log_level=args.log_level,
    )
