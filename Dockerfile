# The image of both services (`internvl-serve encoder` and `internvl-serve decoder`); docker-compose.yml
# builds it once and runs it for each. Build it alone with:
#   docker build -t internvl-serve .                                       # CPU torch (default)
#   docker build -t internvl-serve --build-arg GPU=1 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .  # CUDA torch + gcc for Triton
FROM python:3.11-slim

# torch/torchvision are chosen here, never by pyproject.toml (see README, "Why torch is installed by a
# script"). The pair must import together; the default is the CPU build from PyTorch's CPU wheel index.
ARG TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# GPU=1 installs gcc: Triton compiles a small C launcher for its kernels at run time (the decoder uses the
# Triton kernels on CUDA; on CPU it uses the PyTorch reference path and needs no compiler).
ARG GPU=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN if [ "$GPU" = 1 ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi

# torch first, in its own layer: it is the big download and changes least often.
RUN python -m venv "$VENV" \
 && "$VENV/bin/pip" install --disable-pip-version-check --index-url "$TORCH_INDEX_URL" $TORCH_SPEC

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY proto proto
COPY services services
COPY kernels kernels
COPY clients clients
COPY scripts scripts
# The project's own installer: it keeps the torch installed above and installs the package (editable) and
# its dependencies into $VENV.
RUN INTERNVL_TORCH="$TORCH_SPEC" INTERNVL_TORCH_INDEX_URL="$TORCH_INDEX_URL" bash scripts/install.sh

# Run as an unprivileged user; the checkpoint directory is mounted read-only at /models.
RUN useradd --create-home --uid 10001 internvl
USER internvl
ENV HOME=/home/internvl

# 50051: VisionEncoderService, 50052: GenerationService (both also serve grpc.health.v1 and reflection).
EXPOSE 50051 50052
# The services stop gracefully on SIGTERM (NOT_SERVING, in-flight requests finish within --grace-s).
STOPSIGNAL SIGTERM
# Health: `internvl-serve healthcheck --quiet 127.0.0.1:PORT` (exit 0 when SERVING; it imports no torch);
# docker-compose.yml sets it per service, since the port depends on the command.
CMD ["internvl-serve", "--help"]
