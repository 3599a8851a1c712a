"""Open an InternVL3 checkpoint directory and read only the tensors one service needs.

Checks that the directory really is an InternVL3 `-hf` checkpoint (config, architecture, tensor names and
shapes) and fails with a CheckpointError that names the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from internvl_serve.checkpoint.errors import CheckpointError
from internvl_serve.checkpoint.layout import COMPONENTS, TensorSpec, detect_layout, parameter_specs, to_canonical
from internvl_serve.checkpoint.prequantized import dequantize, quantization_of, stats_keys

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_HF_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt"]


def resolve_model(model: str) -> Path:
    """A local directory as is; otherwise a hub id, downloaded by transformers' own hub client."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"--model {model!r} is a file; pass the checkpoint directory")
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise CheckpointError(f"--model {model!r}: no such directory (and not a hub id like OpenGVLab/InternVL3-1B-hf)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=_HF_PATTERNS))
    except Exception as exc:  # the hub client raises many types; all mean "could not fetch"
        raise CheckpointError(
            f"--model {model!r} is not a local directory and could not be downloaded from the hub "
            f"({type(exc).__name__}); download it elsewhere and pass the directory"
        ) from exc


@dataclass
class LoadReport:
    """What a load touched, so tests and logs can show a service read only its own tensors."""

    files_opened: list[str] = field(default_factory=list)
    tensors_read: int = 0
    bytes_read: int = 0


@dataclass
class Checkpoint:
    path: Path
    config: object  # transformers.InternVLConfig
    layout: str  # "hub" or "legacy"
    weight_map: dict[str, str]  # canonical name -> (stored key, file) via stored_keys
    stored_keys: dict[str, str]  # canonical name -> key as stored
    quantization: dict | None = None  # a pre-quantized checkpoint's QuantSettings fields (prequantized.py)

    def specs(self, component: str) -> list[TensorSpec]:
        prefixes = COMPONENTS[component]
        return [s for s in parameter_specs(self.config) if s.name.startswith(prefixes)]

    def load(
        self,
        component: str,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        transform=None,
    ) -> tuple[dict[str, torch.Tensor], LoadReport]:
        """Canonical name -> tensor for every parameter of `component` ("vision" or "language").
        `transform(name, tensor)`: applied to each tensor as it is read (a tensor-parallel rank keeps its
        slice, so host memory holds one full tensor at a time, not the whole model)."""
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {sorted(COMPONENTS)}")
        specs = self.specs(component)
        missing = [s.name for s in specs if s.name not in self.stored_keys]
        if missing:
            raise CheckpointError(
                f"{self.path}: {len(missing)} {component} tensor(s) missing from the safetensors, "
                f"first {missing[0]!r} (stored as {_stored_hint(missing[0], self.layout)!r}); "
                "the checkpoint is incomplete or was written for another architecture"
            )
        by_file: dict[str, list[TensorSpec]] = {}
        for spec in specs:
            by_file.setdefault(self.weight_map[spec.name], []).append(spec)
        report = LoadReport()
        state: dict[str, torch.Tensor] = {}
        for filename in sorted(by_file):
            report.files_opened.append(filename)
            with safe_open(str(self.path / filename), framework="pt", device="cpu") as f:
                keys = list(f.keys()) if self.quantization else []
                for spec in by_file[filename]:
                    tensor = f.get_tensor(self.stored_keys[spec.name])
                    if self.quantization and tensor.dtype == torch.uint8 and tuple(tensor.shape) != spec.shape:
                        stored = self.stored_keys[spec.name]
                        stats = {k[len(stored) + 1 :]: f.get_tensor(k) for k in stats_keys(stored, keys)}
                        tensor = dequantize(tensor, stats, spec.shape)
                    if tuple(tensor.shape) != spec.shape:
                        raise CheckpointError(
                            f"{self.path}: tensor {self.stored_keys[spec.name]!r} has shape {tuple(tensor.shape)}, "
                            f"but config.json implies {spec.shape}; config.json and the weights do not match"
                        )
                    report.tensors_read += 1
                    report.bytes_read += tensor.numel() * tensor.element_size()
                    if transform is not None:
                        tensor = transform(spec.name, tensor)
                    state[spec.name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
        return state, report


def _stored_hint(name: str, layout: str) -> str:
    from internvl_serve.checkpoint.layout import to_layout

    return to_layout(name, layout)


def _read_config(path: Path) -> tuple[object, dict]:
    """transformers' InternVLConfig and the raw config.json it came from."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json; not a Hugging Face checkpoint directory")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from exc
    model_type = raw.get("model_type")
    arch = raw.get("architectures") or []
    if model_type != "internvl" or (arch and "InternVLForConditionalGeneration" not in arch):
        raise CheckpointError(
            f"{path}: config.json says model_type={model_type!r}, architectures={arch}; expected an InternVL3 "
            "-hf checkpoint (model_type 'internvl', InternVLForConditionalGeneration). The original "
            "OpenGVLab/InternVL3-* repos use remote code: use their '-hf' versions"
        )
    if (raw.get("text_config") or {}).get("model_type", "qwen2") != "qwen2":
        raise CheckpointError(
            f"{path}: language model {raw['text_config'].get('model_type')!r} is not supported (Qwen2 only)"
        )
    from transformers import InternVLConfig

    try:
        return InternVLConfig.from_pretrained(str(path)), raw
    except Exception as exc:  # transformers raises several types for a malformed config
        raise CheckpointError(f"{config_file}: transformers cannot read it ({exc})") from exc


def _read_weight_index(path: Path) -> dict[str, str]:
    """Stored key -> file name, from the index, or from a single unsharded file."""
    index_file = path / _INDEX
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_file}: not a safetensors index (no 'weight_map')") from exc
        for filename in sorted(set(weight_map.values())):
            if not (path / filename).is_file():
                raise CheckpointError(f"{path}: {_INDEX} names {filename}, which is missing")
        return weight_map
    single = path / _SINGLE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {key: _SINGLE for key in f.keys()}
    raise CheckpointError(
        f"{path}: no weights ({_INDEX} or {_SINGLE}); for make-tiny-model's real-shape presets pass --weights"
    )


def open_checkpoint(model: str | Path) -> Checkpoint:
    path = resolve_model(str(model))
    config, raw_config = _read_config(path)
    stored = _read_weight_index(path)
    try:
        layout = detect_layout(list(stored))
    except ValueError:
        raise CheckpointError(
            f"{path}: the safetensors hold no InternVL tensors (expected keys like "
            "'model.vision_tower.*' or 'vision_tower.*')"
        ) from None
    stored_keys: dict[str, str] = {}
    weight_map: dict[str, str] = {}
    for key, filename in stored.items():
        name = to_canonical(key)
        if name is not None:
            stored_keys[name] = key
            weight_map[name] = filename
    quantization = quantization_of(raw_config, str(path))
    return Checkpoint(
        path=path,
        config=config,
        layout=layout,
        weight_map=weight_map,
        stored_keys=stored_keys,
        quantization=quantization,
    )


def assign(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    """Load the tensors under `prefix` into `module` (names relative to the prefix), all or nothing."""
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(sub)), sorted(set(sub) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"tensors under {prefix!r} do not fit {type(module).__name__}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    module.load_state_dict(sub, strict=True)


def fingerprint(state: dict[str, torch.Tensor], *extra: object) -> str:
    """A short hex digest of tensor names, shapes, dtypes and bytes (plus `extra`), e.g. for cache keys."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for item in extra:
        h.update(repr(item).encode())
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
