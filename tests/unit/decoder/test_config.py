"""DecoderConfig from flags, its validation, and how a KV budget becomes blocks."""

from __future__ import annotations

import argparse

import pytest
import torch

from internvl_serve.decoder.config import DecoderConfig, MiB, add_decoder_arguments, decoder_config_from_args
from internvl_serve.decoder.engine.kv_cache import KVCacheSpec, num_kv_blocks


def parse(*argv: str) -> DecoderConfig:
    p = argparse.ArgumentParser()
    add_decoder_arguments(p)
    return decoder_config_from_args(p.parse_args(["--model", "m", *argv]))


def test_flags_reach_the_config():
    c = parse(
        "--encoder",
        "a:1, b:2",
        "--kv-cache-mb",
        "64",
        "--block-size",
        "32",
        "--max-num-seqs",
        "4",
        "--max-tokens-per-step",
        "512",
        "--max-queue",
        "9",
        "--default-max-new-tokens",
        "10",
        "--max-context-len",
        "1000",
        "--port",
        "0",
    )
    assert c.encoders == ("a:1", "b:2") and c.kv_cache_bytes == 64 * MiB and c.block_size == 32
    assert (c.max_num_seqs, c.max_tokens_per_step, c.max_queue) == (4, 512, 9)
    assert (c.default_max_new_tokens, c.max_context_len, c.port) == (10, 1000, 0)
    assert parse().encoders == () and parse().block_size == 16 and parse().default_max_new_tokens == 256


def test_the_encoder_client_settings_reach_the_config():
    c = parse("--max-encoder-reply-mb", "256", "--encoder-attempts", "5", "--encoder-backoff-s", "0.5")
    assert (c.max_encoder_reply_bytes, c.encoder_attempts, c.encoder_backoff_s) == (256 * MiB, 5, 0.5)
    d = parse()
    assert (d.max_encoder_reply_bytes, d.encoder_attempts, d.encoder_backoff_s) == (1024 * MiB, 5, 0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block_size": 12}, "power of two"),
        ({"max_num_seqs": 8, "max_tokens_per_step": 4}, "must be >= --max-num-seqs"),
        ({"max_queue": 0}, "--max-queue"),
        ({"kv_cache_bytes": 0}, "--kv-cache-mb"),
        ({"dtype": "int8"}, "--dtype"),
        ({"grace_s": -1}, "--grace-s"),
        ({"encoder_attempts": 0}, "--encoder-attempts"),
        ({"encoder_backoff_s": -0.1}, "--encoder-backoff-s"),
        ({"max_encoder_reply_bytes": 0}, "--max-encoder-reply-mb"),
    ],
)
def test_bad_settings_are_refused_with_the_flag_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig(model="m", **kwargs)


def test_kv_budget_to_blocks():
    spec = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=16, dtype=torch.float32)
    assert spec.bytes_per_block == 2 * 2 * 16 * 2 * 16 * 4
    cpu = torch.device("cpu")
    assert num_kv_blocks(DecoderConfig(model="m", kv_cache_bytes=10 * spec.bytes_per_block + 5), spec, cpu) == 10
    assert num_kv_blocks(DecoderConfig(model="m", num_kv_blocks=3, kv_cache_bytes=MiB), spec, cpu) == 3
    with pytest.raises(ValueError, match="holds no block"):
        num_kv_blocks(DecoderConfig(model="m", kv_cache_bytes=100), spec, cpu)
