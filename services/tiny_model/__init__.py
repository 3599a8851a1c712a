"""Random-weight InternVL3 checkpoints in the exact on-disk format of the `-hf` releases."""
