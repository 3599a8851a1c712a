#!/usr/bin/env bash
# One prepared command for a device machine: correctness of the Triton attention kernels (native bf16/fp16)
# against the PyTorch references, then prefill TFLOP/s and decode GB/s against torch SDPA and a measured
# device-to-device copy. Prints markdown tables; writes results.json to $OUT (else bench_out/).
# Without CUDA it runs the correctness part under the Triton interpreter and skips timing, so it can be
# tried on a CPU before GPU minutes are spent. The kernels part needs only torch and triton (kernels/ is
# loaded by path); the 4-bit part (benchmarks/gpu_quant_check.py) needs the project and bitsandbytes, and
# skips itself without bitsandbytes. SKIP_QUANT_CHECK=1 leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
out="${OUT:-bench_out}"
# benchmarks/ only: the repo root must stay off sys.path (its kernels/ folder shadows the HF `kernels` package).
export PYTHONPATH="$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
status=0
"$py" benchmarks/gpu_check.py --out "$out" "$@" || status=$?
# Then 4-bit weights (bitsandbytes) through our services against transformers' 4-bit model; this part needs
# the project installed. A failure is reported and counted, and never stops what ran before it.
if [ "${SKIP_QUANT_CHECK:-0}" != 1 ]; then
  "$py" benchmarks/gpu_quant_check.py --out "$out" || { echo "4-bit check FAILED" >&2; status=1; }
fi
exit "$status"
