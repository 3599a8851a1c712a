#!/usr/bin/env bash
# The main job on a fresh machine: install, start the whole stack (`internvl-serve up`: redis-server, one
# vision encoder, one decoder), answer the model card's one-image chat through `internvl-client generate`,
# then keep serving until Ctrl-C.
#
#   bash scripts/run.sh                                  # tiny random checkpoint (offline; answers random text)
#   bash scripts/run.sh --model /models/InternVL3-1B-hf --image cat.jpg "Please describe the image explicitly."
#   bash scripts/run.sh --demo-only                      # stop after the answer (tests, CI)
#
# Other options: --video PATH, --max-new-tokens N, --stream, and for `up`: --host, --port, --encoder-port,
# --redis-port, --no-redis, --device, --dtype, --log-dir (`bash scripts/run.sh --help`). Without redis-server
# on PATH the stack runs without the embedding cache (as root with apt-get, it is installed first).
# The transformers reference answer for the same chat: .venv/bin/internvl-serve oracle [--model ...].
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "run: installing redis-server (Debian package)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
    || echo "run: could not install redis-server; the stack runs without the embedding cache" >&2
fi

bash scripts/install.sh >&2
exec .venv/bin/python -m internvl_serve.stack.demo "$@"
