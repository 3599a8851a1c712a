"""benchmarks/serving_bench.py: its workload is deterministic and mixed as documented, its figures add up,
and the script runs end to end against our real stack and transformers (tiny checkpoint, a few requests;
vLLM's CPU build is not installed in CI, so it is left out here)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving_workload import OUTPUT_LENGTHS, Outcome, make_requests, summarise  # noqa: E402


def test_the_workload_is_deterministic_and_mixed():
    a, b = make_requests(40, 1.0, seed=3), make_requests(40, 1.0, seed=3)
    assert a == b and a != make_requests(40, 1.0, seed=4)
    assert {r.kind for r in a} == {"image", "second turn", "text"}
    assert all(r.max_tokens in OUTPUT_LENGTHS for r in a)
    arrivals = [r.arrival_s for r in a]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0 and 10 < arrivals[-1] < 100  # ~1/s
    assert all(r.arrival_s == 0 for r in make_requests(10, math.inf))
    second = next(r for r in a if r.kind == "second turn")
    assert [t[0] for t in second.turns] == ["user", "assistant", "user"] and second.turns[0][2] is not None


def test_figures_add_up():
    requests = make_requests(2, math.inf)
    one, two = Outcome(requests[0], 0.0, [1.0, 1.5, 2.0]), Outcome(requests[1], 0.0, [2.0, 4.0])
    s = summarise([one, two])
    assert s["output_tokens"] == 5 and s["duration_s"] == 4.0 and s["output_tokens_per_s"] == 1.25
    assert s["ttft_p50_s"] == 1.5 and s["latency_p90_s"] == 4.0 and s["failed"] == 0
    assert s["tpot_p50_s"] == 1.25  # (0.5 + 2.0) / 2
    failed = Outcome(requests[1], 0.0, [], error="UNAVAILABLE")
    assert summarise([one, failed])["failed"] == 1


def test_the_script_runs_against_our_stack_and_transformers(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    argv = [sys.executable, str(ROOT / "benchmarks" / "serving_bench.py"), "--model", str(tiny_model_dir)]
    argv += ["--requests", "3", "--rates", "4", "--systems", "ours,transformers", "--out", str(tmp_path)]
    result = subprocess.run([*argv, "--no-docs"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads((tmp_path / "serving.json").read_text())["runs"]
    assert set(runs) == {
        "internvl-serve (gRPC)",
        "internvl-serve, prefix caching off",
        "internvl-serve (OpenAI HTTP)",  # the same client that drives vLLM
        "transformers, static batching",
    }
    for by_scenario in runs.values():
        for figures in by_scenario.values():
            assert figures["failed"] == 0 and figures["output_tokens"] > 0
    assert set(runs["internvl-serve (gRPC)"]) == {"all at once", "4 req/s"}
