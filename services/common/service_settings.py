"""The settings both services take, each written once: default, flag, environment variable and help.

A dataclasses.Field belongs to one class, so these are functions: each call makes a new field.

    @dataclass(frozen=True)
    class EncoderConfig:
        host: str = host_setting()
"""

from __future__ import annotations

from typing import Any

from internvl_serve.common.config_fields import setting
from internvl_serve.common.placement import DTYPES

MiB = 1024 * 1024


def model_setting() -> Any:
    return setting(help="checkpoint directory or hub id (-hf format)")


def host_setting() -> Any:
    return setting("127.0.0.1", "address to listen on (0.0.0.0 in containers)", env="INTERNVL_HOST")


def device_setting() -> Any:
    return setting("auto", "auto (cuda when available), cpu, cuda, cuda:N", env="INTERNVL_DEVICE")


def dtype_setting() -> Any:
    return setting("auto", "auto: bfloat16 on GPU, float32 on CPU", env="INTERNVL_DTYPE", choices=("auto", *DTYPES))


def num_threads_setting() -> Any:
    return setting(
        0, "torch intra-op threads for the model (0: torch's default, one per core)", env="INTERNVL_NUM_THREADS"
    )


DEFAULT_REQUEST_MEDIA_BYTES = 256 * MiB  # one video at the default --max-video-mb
REQUEST_OVERHEAD_BYTES = MiB  # a request's text, ids and framing beyond its media bytes


def max_receive_setting() -> Any:
    """Default (None): --max-request-media-mb plus REQUEST_OVERHEAD_BYTES (receive_limit)."""
    return setting(
        None,
        "largest gRPC request accepted, in MiB (default: --max-request-media-mb + 1)",
        flag="--max-receive-mb",
        scale=MiB,
    )


def max_request_media_setting() -> Any:
    return setting(
        DEFAULT_REQUEST_MEDIA_BYTES,
        "media bytes (images + videos) one request may carry in all, in MiB",
        flag="--max-request-media-mb",
        scale=MiB,
    )


def receive_limit(config: Any) -> int:
    """The gRPC request limit: --max-receive-mb, else sized to the media limit (--max-request-media-mb)."""
    if config.max_receive_bytes is not None:
        return config.max_receive_bytes
    return config.max_request_media_bytes + REQUEST_OVERHEAD_BYTES


def drain_notice_setting() -> Any:
    return setting(
        1.0,
        "SIGTERM: seconds health says NOT_SERVING while calls are still answered, so clients move to other "
        "replicas before this one refuses any",
    )


def metrics_port_setting() -> Any:
    """Prometheus /metrics (common/prometheus.py); None: not served."""
    return setting(
        None,
        "serve Prometheus /metrics on this port (0 picks a free port; default: off)",
        env="INTERNVL_METRICS_PORT",
        parse=int,
    )


def max_send_setting(default_bytes: int) -> Any:
    return setting(default_bytes, "largest gRPC reply sent, in MiB", flag="--max-send-mb", scale=MiB)


def grace_setting() -> Any:
    return setting(10.0, "SIGTERM: time in-flight requests get to finish")


def log_level_setting() -> Any:
    return setting("INFO", "log level", env="INTERNVL_LOG_LEVEL")


def common_problems(config: Any) -> list[str]:
    """What is wrong with the settings above (field names as here), each naming its flag."""
    problems = []
    if config.num_threads < 0:
        problems.append(f"--num-threads must be >= 0, got {config.num_threads}")
    if config.dtype not in ("auto", *DTYPES):
        problems.append(f"--dtype must be auto or one of {sorted(DTYPES)}, got {config.dtype!r}")
    if config.metrics_port is not None and not 0 <= config.metrics_port < 65536:
        problems.append(f"--metrics-port must lie in [0, 65535], got {config.metrics_port}")
    if (config.max_receive_bytes is not None and config.max_receive_bytes < 1) or config.max_send_bytes < 1:
        problems.append("--max-receive-mb and --max-send-mb must be > 0")
    if config.max_request_media_bytes < 1:
        problems.append("--max-request-media-mb must be > 0")
    if config.grace_s < 0:
        problems.append(f"--grace-s must be >= 0, got {config.grace_s}")
    if config.drain_notice_s < 0:
        problems.append(f"--drain-notice-s must be >= 0, got {config.drain_notice_s}")
    if config.max_in_flight < 1:
        problems.append(f"--max-in-flight must be >= 1, got {config.max_in_flight}")
    problems += config.tls.problems()
    return problems
