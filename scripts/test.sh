#!/usr/bin/env bash
# Install everything the tests need (redis-server, the venv with the right torch, clients/node's npm packages when
# npm is there), lint, and run the whole suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k loader`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing redis-server (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "test: redis-server is not on PATH; install it (Debian/Ubuntu: sudo apt-get install redis-server)" >&2
    exit 2
  fi
fi

bash scripts/install.sh
# Lint and format first (settings in pyproject.toml): a finding fails the run before any test starts.
echo "test: ruff check + ruff format --check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The Node.js client (clients/node) is tested against a real stack by tests/integration/clients/test_node_client.py;
# once its packages are installed that test must run (INTERNVL_REQUIRE_NODE=1), not skip.
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
  echo "test: npm ci in clients/node"
  (cd clients/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  export INTERNVL_REQUIRE_NODE=1
else
  echo "test: node/npm are not on PATH: the Node.js client test (clients/node) will be skipped" >&2
fi
# The tests start their own redis-server on free ports; nothing else needs to run.
exec .venv/bin/pytest "$@"
