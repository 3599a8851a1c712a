"""benchmarks/soak.py end to end at a small size: real processes (two decoders, two encoders, Redis), every
fault of its schedule, and its verdict: no non-retryable failure, no request lost in the drain, every KV
block free at the end. (The figures in docs/benchmarks.md come from a longer run of the same script.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


def test_the_soak_runs_every_fault_and_loses_nothing(tmp_path, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    argv = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--model", str(tiny_model_dir)]
    argv += ["--clients", "3", "--duration-s", "20", "--out", str(tmp_path), "--no-docs"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = json.loads((tmp_path / "soak.json").read_text())
    assert r["non_retryable_failures"] == 0 and r["sent"] > 0 and r["succeeded"] > 0, r["failures"]
    assert r["retryable_failures"] <= 0.01 * r["sent"], r["failures"]  # the longer runs show none at all
    assert [e["fault"] for e in r["events"]][-1].startswith("decoder A drained")
    drain = next(e for e in r["events"] if "drained_exit_code" in e)
    assert drain["drained_exit_code"] == 0 and drain["drain_log"]["finished_in_grace"] is True
    assert r["failed_during_drain"] == 0, r["failures"]  # behind a second decoder, a drain loses nothing
    kv = r["kv_blocks_at_end"]
    assert kv["kv_blocks_free"] == kv["kv_blocks_total"] > 0
    assert all(r["by_kind"][k] > 0 for k in ("new image", "media_id", "text"))
