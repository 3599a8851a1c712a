"""Random weights for an InternVL config, written as sharded safetensors with an index.

Weights are scaled so a tiny model is *input-sensitive* (DESIGN.md section 4): with transformers' default
std 0.02 a small random model answers from the last prompt token alone, so every image chat would get
the same tokens and a parity test could not tell a right image path from a wrong one.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from internvl_serve.checkpoint.layout import KEY_LAYOUTS, TensorSpec, parameter_specs, to_layout


def random_tensor(spec: TensorSpec, seed: int, device: str = "cpu") -> torch.Tensor:
    """One tensor, seeded by (seed, name) so the bytes do not depend on iteration order."""
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(spec.name.encode()))

    def normal(std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(spec.shape, generator=gen, device=device) * std + mean

    leaf = spec.name.rsplit(".", 1)[-1]
    if "embed_tokens" in spec.name:
        return normal(1.0)
    if leaf in ("cls_token", "position_embeddings"):
        return normal(0.5)
    if leaf.startswith("lambda_"):  # InternViT layer scale
        return normal(0.1, mean=0.5)
    if "norm" in spec.name and leaf == "weight":
        return normal(0.1, mean=1.0)
    if leaf == "bias":
        return normal(0.1)
    fan_in = math.prod(spec.shape[1:]) if len(spec.shape) > 1 else spec.shape[0]
    # Sharper attention: with unit-scale q/k the softmax over hundreds of image tokens is nearly uniform,
    # averaging every image to the same context; larger q/k make answers depend on the image.
    gain = 2.0 if leaf == "weight" and spec.name.split(".")[-2] in ("q_proj", "k_proj") else 1.0
    return normal(gain / math.sqrt(fan_in))


def plan_shards(specs: list[TensorSpec], itemsize: int, max_shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        nbytes = math.prod(spec.shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def write_weights(
    out_dir: Path,
    config,
    *,
    seed: int,
    dtype: torch.dtype,
    max_shard_bytes: int,
    layout: str = "hub",
    device: str = "cpu",
) -> dict[str, str]:
    """Write model-0000i-of-0000n.safetensors and model.safetensors.index.json; return the weight map."""
    if layout not in KEY_LAYOUTS:
        raise ValueError(f"layout must be one of {KEY_LAYOUTS}, got {layout!r}")
    specs = parameter_specs(config)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards = plan_shards(specs, itemsize, max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for spec in shard:
            key = to_layout(spec.name, layout)
            tensors[key] = random_tensor(spec, seed, device).to(dtype).cpu().contiguous()
            weight_map[key] = filename
            total += tensors[key].numel() * itemsize
        save_file(tensors, str(out_dir / filename), metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map
