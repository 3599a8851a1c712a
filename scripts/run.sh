#!/usr/bin/env bash
# The main job on a fresh machine: install, then answer the model card's one-image chat.
# With no --model it builds (once) a tiny random checkpoint, which answers with random text; pass
# `--model /path/to/InternVL3-1B-hf` (or a hub id on a machine with internet) for real answers.
# Extra arguments go to `internvl-serve oracle` (e.g. --image cat.jpg "What is in the picture?").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >&2
exec .venv/bin/internvl-serve oracle "$@"
