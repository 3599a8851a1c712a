#!/usr/bin/env bash
# Create .venv and install the project with the right torch for this machine.
#
# Why a script: a bare `torch` requirement makes pip pull a multi-GB CUDA build on a fresh machine, and
# transformers' InternVL processor needs a torchvision that imports beside that torch (PyPI's torchvision
# does not import beside the CPU-only torch 2.13.0 wheel). So torch/torchvision are chosen here, never by
# pyproject.toml:
#   * INTERNVL_TORCH="torch==X torchvision==Y" (and optionally INTERNVL_TORCH_INDEX_URL) picks them yourself,
#     for example a CPU-only pair from PyTorch's CPU wheel index;
#   * aarch64: torch 2.9.1 + torchvision 0.24.1 (CPU builds on PyPI, ~0.7 GB);
#   * x86_64: torch 2.14.1 + torchvision 0.29.1, but only when pip finds them on this machine's disk
#     (a local wheel mirror); otherwise it stops and says how to choose, unless ALLOW_CUDA_TORCH=1.
# An already-installed torch that imports with a working torchvision is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

have_torch() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import torch, torchvision  # noqa: F401  (both must import together)
PY
}

pick_torch() {
  if [ -n "${INTERNVL_TORCH:-}" ]; then echo "$INTERNVL_TORCH"; return; fi
  case "$(uname -m)" in
    aarch64|arm64) echo "torch==2.9.1 torchvision==0.24.1" ;;
    *) echo "torch==2.14.1 torchvision==0.29.1" ;;
  esac
}

# True when pip would take every wheel of the spec from local files (no multi-GB download).
local_only() {
  pip install --dry-run --quiet --ignore-installed --no-deps --report - $1 2>/dev/null \
    | "$VENV/bin/python" -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r["install"] and all(i["download_info"]["url"].startswith("file:") for i in r["install"]) else 1)'
}

if have_torch; then
  echo "install: keeping the installed torch/torchvision"
else
  spec=$(pick_torch)
  index_args=()
  [ -n "${INTERNVL_TORCH_INDEX_URL:-}" ] && index_args=(--index-url "$INTERNVL_TORCH_INDEX_URL")
  if [ -z "${INTERNVL_TORCH:-}" ] && [ "$(uname -m)" = x86_64 ] && [ "${ALLOW_CUDA_TORCH:-0}" != 1 ] && ! local_only "$spec"; then
    cat >&2 <<MSG
install: $spec is not on this machine's disk, and from PyPI it is a CUDA build of several GB.
  Choose one, then run this again:
    INTERNVL_TORCH="torch==<ver>+cpu torchvision==<ver>+cpu" INTERNVL_TORCH_INDEX_URL=<PyTorch's CPU wheel index>
    ALLOW_CUDA_TORCH=1   (accept the CUDA build; needed on a GPU machine anyway)
MSG
    exit 2
  fi
  echo "install: $spec"
  pip install --quiet "${index_args[@]}" $spec
fi

# --no-build-isolation: setuptools from the venv, so the build needs no download of its own.
pip install --quiet setuptools wheel
pip install --quiet --no-build-isolation -e ".[dev]"
echo "install: done ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
