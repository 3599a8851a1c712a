"""Key layouts of InternVL `-hf` safetensors and the expected parameter shapes of a config.

Canonical names are the module names of transformers' InternVLForConditionalGeneration (the "hub" layout
of the OpenGVLab -hf releases): `model.vision_tower.*`, `model.multi_modal_projector.*`,
`model.language_model.*`, `lm_head.weight`. transformers 5.23's save_pretrained writes the "legacy"
layout: `vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head.weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KEY_LAYOUTS = ("hub", "legacy")

# (canonical prefix, legacy prefix)
_LEGACY_PREFIXES = [
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]

# What each service loads, by canonical prefix.
COMPONENTS = {
    "vision": ("model.vision_tower.", "model.multi_modal_projector."),
    "language": ("model.language_model.", "lm_head."),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str  # canonical name
    shape: tuple[int, ...]


def parameter_specs(config) -> list[TensorSpec]:
    """Every parameter transformers builds for `config`, without allocating memory."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    return [TensorSpec(name, tuple(p.shape)) for name, p in model.named_parameters()]


def to_layout(name: str, layout: str) -> str:
    """Canonical name -> the name stored in a checkpoint of `layout`."""
    if layout == "hub":
        return name
    for new, old in _LEGACY_PREFIXES:
        if name.startswith(new):
            return old + name[len(new) :]
    raise ValueError(f"no legacy key for {name}")


def to_canonical(key: str) -> str | None:
    """A stored key in either layout -> canonical name (None for keys of neither layout)."""
    for new, old in _LEGACY_PREFIXES:
        if key.startswith(new):
            return key
    for new, old in _LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def detect_layout(keys: list[str]) -> str:
    if any(k.startswith(("model.vision_tower.", "model.language_model.")) for k in keys):
        return "hub"
    if any(k.startswith(("vision_tower.", "language_model.")) for k in keys):
        return "legacy"
    raise ValueError("no InternVL keys")
