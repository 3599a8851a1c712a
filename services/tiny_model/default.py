"""The embedded default checkpoint: a tiny random model, built once and reused, so everything works offline."""

from __future__ import annotations

import os
from pathlib import Path


def default_model_dir() -> Path:
    """Build (once) and return the tiny checkpoint under $INTERNVL_SERVE_HOME (default ~/.cache/internvl-serve)."""
    from internvl_serve.tiny_model.writer import make_tiny_model

    home = Path(os.environ.get("INTERNVL_SERVE_HOME", Path.home() / ".cache" / "internvl-serve"))
    target = home / "tiny-seed0"
    if (target / "model.safetensors.index.json").is_file():
        return target
    staging = home / f".tiny-seed0.{os.getpid()}"
    make_tiny_model(staging, "tiny", seed=0)
    try:
        staging.rename(target)  # atomic: a concurrent builder either wins or finds it done
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target
