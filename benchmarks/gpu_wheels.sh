#!/usr/bin/env bash
# Run HERE (where pip reaches the package index), before a device session: downloads the wheels the device
# image lacks for this project (its Python 3.12, x86-64), at the versions this venv runs, into
# bench_out/gpu_wheels (ignored by git). Carry that folder to the device (device tool: carry
# ["bench_out/gpu_wheels"]); benchmarks/gpu_check.sh installs them there with --no-index.
#
# What the device image has (torch, triton, transformers 5.17, numpy, pillow, safetensors, tokenizers,
# grpcio, protobuf, aiohttp, ...) is listed in the device tool's KINDS.md; missing there are PyAV, the
# gRPC health/reflection services, OpenTelemetry, redis, starlette/uvicorn and llguidance. grpcio, protobuf
# and transformers are carried too, at our pins (our generated stubs need grpcio >= 1.85.1 and
# protobuf >= 7.35.1; the project pins transformers 5.23).
#
#   bash benchmarks/gpu_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
dest="${1:-bench_out/gpu_wheels}"
packages=(
  av grpcio protobuf grpcio-health-checking grpcio-reflection googleapis-common-protos
  opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto
  opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-grpc
  opentelemetry-exporter-otlp-common opentelemetry-exporter-prometheus
  redis starlette uvicorn llguidance transformers
)
specs=()
for name in "${packages[@]}"; do
  version=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  specs+=("$name==$version")
done
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in $(seq 17 39); do # the device's glibc is newer than any of these; pip matches each tag exactly
  platforms+=(--platform "manylinux_2_${n}_x86_64")
done
mkdir -p "$dest"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${specs[@]}"
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest (the device tool carries 64 MiB in all)"
