"""benchmarks/gpu_check.sh runs on a CPU before GPU minutes are spent on it.

The plain run is what a CPU machine does (correctness under the interpreter, timing skipped); the smoke
run also drives every timed code path at toy sizes, since those paths otherwise only run on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _run(out: Path, *extra: str, quant: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself
    env["OUT"] = str(out)
    env["SKIP_QUANT_CHECK"] = "0" if quant else "1"
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_cpu_run_checks_correctness_and_skips_timing(tmp_path):
    res = _run(tmp_path, quant=True)
    quant = json.loads((tmp_path / "quant_check.json").read_text())  # 4-bit tokens vs transformers, on the CPU
    assert quant["ok"] and {(r["quant"], r["chat"]) for r in quant["rows"]} == {
        (q, c) for q in ("fp4", "nf4") for c in ("text", "image")
    }
    kinds = {(r["kernel"].split()[0], r["shape"], r["dtype"]) for r in res["correctness"]}
    assert kinds == {
        (k, s, d)
        for k in ("write_kv_cache", "prefill", "decode")
        for s in ("14B", "1B")
        for d in ("float32", "float16")
    }
    assert all(r["ok"] for r in res["correctness"])
    assert res["skipped"] == ["timing: no CUDA device"]


@pytest.mark.slow
def test_timing_paths_run_at_toy_sizes(tmp_path):
    res = _run(tmp_path, "--cpu-timing-smoke")
    assert not res["skipped"], res["skipped"]
    for kind in ("prefill", "decode"):
        assert {r["shape"] for r in res[kind]} == {"14B", "1B"}
        assert all(r["ratio"] > 0 for r in res[kind])
    assert {r["kind"] for r in res["tuning"]} == {"prefill", "decode"}
