"""Reading InternVL3 `-hf` checkpoints: only the tensors a service needs, in either key layout."""

from internvl_serve.checkpoint.errors import CheckpointError
from internvl_serve.checkpoint.loader import (
    Checkpoint,
    LoadReport,
    assign,
    fingerprint,
    open_checkpoint,
    resolve_model,
)

__all__ = ["Checkpoint", "CheckpointError", "LoadReport", "assign", "fingerprint", "open_checkpoint", "resolve_model"]
