"""`scripts/run.sh --demo-only`: the README's main job end to end (install, `internvl-serve up`, the model card's
one-image chat through `internvl-client generate`, a clean stop). About 30 s when the venv exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="run.sh would install redis-server with apt-get")
def test_run_sh_demo_only_answers_the_card_chat_and_stops(tmp_path):
    env = {**os.environ, "INTERNVL_SERVE_HOME": str(tmp_path / "home")}  # builds its own tiny checkpoint
    result = subprocess.run(
        [
            "bash",
            "scripts/run.sh",
            "--demo-only",
            "--max-new-tokens",
            "6",
            "--port",
            "0",
            "--encoder-port",
            "0",
            "--redis-port",
            "0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "preparing the tiny checkpoint" in out and "random text" in out
    command = next(line for line in out.splitlines() if line.startswith("run: ") and " generate --target " in line)
    assert command.endswith("--max-new-tokens 6 'Please describe the image explicitly.'")
    answer = out.split(command, 1)[1].splitlines()
    answer = [line for line in answer if line.strip() and not line.startswith(("run:", "["))]
    assert answer, f"no answer printed:\n{out}"
    assert out.rstrip().endswith("everything stopped")
    assert (tmp_path / "home" / "tiny-seed0" / "model.safetensors.index.json").is_file()


def test_the_demo_passes_ups_refusal_through(tmp_path):
    """The entry point behind run.sh: when `up` refuses to start, its message and exit code come through."""
    import socket
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "internvl_serve.stack.demo",
                "--demo-only",
                "--no-redis",
                "--port",
                str(port),
                "--encoder-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "INTERNVL_SERVE_HOME": str(tmp_path)},
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--port {port}: port {port} on 127.0.0.1 is already in use" in result.stderr
    assert " generate --target " not in result.stdout  # no request was attempted
