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


def max_receive_setting(default_bytes: int) -> Any:
    return setting(default_bytes, "largest gRPC request accepted, in MiB", flag="--max-receive-mb", scale=MiB)


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
    if config.max_receive_bytes < 1 or config.max_send_bytes < 1:
        problems.append("--max-receive-mb and --max-send-mb must be > 0")
    if config.grace_s < 0:
        problems.append(f"--grace-s must be >= 0, got {config.grace_s}")
    return problems
