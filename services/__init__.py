"""internvl_serve: InternVL3 over gRPC (vision-encoder workers, paged-KV decoder, Redis embedding cache)."""

__version__ = "0.1.0"
