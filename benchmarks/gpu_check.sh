#!/usr/bin/env bash
# The one prepared command for a device machine: does the product work on a GPU, and how fast. Parts, each
# in its own process under a timeout, the whole within ~8 minutes on an H100 (benchmarks/gpu_check_all.py):
#   a kernels (gpu_check.py)        b engine vs transformers, fp32 tokens / bf16 agreement (gpu_engine_check.py)
#   c 14B decode step vs roofline, eager and CUDA graphs (gpu_decode_step.py)
#   d 14B prefill vs bf16 peak (gpu_prefill.py)    e vision tower at 1/8/32 tiles (gpu_vision.py)
#   f encoder + decoder processes vs transformers' generate (gpu_stack.py)
#   q 4-bit weights vs transformers' 4-bit model (gpu_quant_check.py; skips itself without bitsandbytes)
# Prints each part's tables, then one summary table (part | status | seconds | headline figures); writes
# results.json, gpu_check.md and gpu_check.log (everything printed) to $OUT (else bench_out/).
#
#   bash benchmarks/gpu_check.sh [--parts a,b,c] [--cpu-smoke] [gpu_check.py options, e.g. --cpu-timing-smoke]
#   PARTS=b,c bash benchmarks/gpu_check.sh      SKIP_QUANT_CHECK=1 leaves q out of the default parts
#
# Without CUDA: part a checks the kernels under the Triton interpreter, b-f say "skipped: no CUDA" (with
# --cpu-smoke they run tiny CPU versions of themselves) and the script exits 0. It never needs the
# network: on a bare device it installs the wheels carried in $GPU_WHEELS (default bench_out/gpu_wheels,
# made here by benchmarks/gpu_wheels.sh) and then this project, without dependencies or an index, into
# $GPU_CHECK_SITE; the machine's own torch, triton and CUDA are used.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
out="${OUT:-bench_out}"
mkdir -p "$out"
log="$out/gpu_check.log"
: >"$log"
# benchmarks/ only: the repo root must stay off sys.path (its kernels/ folder shadows the HF `kernels` package).
# $site (carried wheels, this project) comes next, before the machine's own site-packages.
base="${PYTHONPATH:-}"
with_path() { export PYTHONPATH="$PWD/benchmarks$1${base:+:$base}"; }
with_path ""
export PYTHONUNBUFFERED=1

setup_started=$SECONDS
site="${GPU_CHECK_SITE:-/tmp/internvl-gpu-check-site}"
wheels="${GPU_WHEELS:-bench_out/gpu_wheels}"
if compgen -G "$wheels/*.whl" >/dev/null; then
  echo "installing $(ls "$wheels"/*.whl | wc -l) carried wheels from $wheels into $site" | tee -a "$log"
  if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl >>"$log" 2>&1; then
    with_path ":$site"
  else
    echo "installing the carried wheels FAILED (see $log); going on with what the machine has" | tee -a "$log"
  fi
fi
if ! "$py" -c "import internvl_serve" 2>/dev/null; then
  echo "internvl_serve is not importable: installing this tree into $site (no deps, no index)" | tee -a "$log"
  if "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$site" . \
    >>"$log" 2>&1; then
    with_path ":$site"
  else
    echo "installing the project FAILED (see $log): parts b-f and q will fail to import it" | tee -a "$log"
  fi
fi
echo "setup: $((SECONDS - setup_started)) s" | tee -a "$log"

"$py" benchmarks/gpu_check_all.py --out "$out" "$@" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
