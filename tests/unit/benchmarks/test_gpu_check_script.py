"""benchmarks/gpu_check.sh, the one device command, on a CPU: without CUDA every GPU part says "skipped: no
CUDA" and the script exits 0; with --cpu-smoke each part runs its tiny CPU version through the same code;
a part that fails, crashes or hangs is reported and the parts after it still run. (Part a, the kernels,
and q, 4-bit, are run by tests/unit/kernels/test_kernel_gpu_check.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check_all  # noqa: E402

GPU_PARTS = ["b", "c", "d", "e", "f"]


def _script(out: Path, *args: str, **env: str) -> tuple[dict, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PARTS", "CPU_SMOKE")}
    environ |= {"OUT": str(out), "GPU_WHEELS": str(out / "no-wheels"), **env}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), result.stdout


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0][:2] in {f"{k}." for k in "abcdefq"}:
            rows[cells[0][0]] = cells[1:]
    return rows


def test_without_cuda_the_gpu_parts_skip_and_the_script_exits_0(tmp_path):
    res, stdout = _script(tmp_path, PARTS=",".join(GPU_PARTS))
    assert res["order"] == GPU_PARTS
    for key in GPU_PARTS:
        part = res["parts"][key]
        assert (part["status"], part["headline"]) == ("skipped", "skipped: no CUDA"), part
        assert set(part) >= {"title", "status", "seconds", "headline", "figures", "error"}
    rows = _table_rows(stdout)
    assert set(rows) == set(GPU_PARTS) and all(r[0] == "skipped" and r[2] == "skipped: no CUDA" for r in rows.values())
    assert "| part | status | seconds | headline figures |" in (tmp_path / "gpu_check.md").read_text()
    assert "skipped: no CUDA" in (tmp_path / "gpu_check.log").read_text()
    assert res["environment"]["device"] == "cpu (no CUDA)" and res["total_s"] < 60


def test_parts_are_chosen_by_flag_in_a_fixed_order(tmp_path):
    res, _ = _script(tmp_path, "--parts", "e,c")
    assert res["order"] == ["c", "e"] and set(res["parts"]) == {"c", "e"}


@pytest.mark.slow
def test_cpu_smoke_runs_each_part_through_its_code(tmp_path):
    res, stdout = _script(tmp_path, "--cpu-smoke", "--parts", ",".join(GPU_PARTS))
    parts = res["parts"]
    assert {k: parts[k]["status"] for k in GPU_PARTS} == dict.fromkeys(GPU_PARTS, "ok"), {
        k: (parts[k]["headline"], parts[k]["error"]) for k in GPU_PARTS
    }
    b = parts["b"]["figures"]
    assert {r["chat"] for r in b["rows"]} == {"text only", "one image", "several images", "video"}
    assert {(r["dtype"], r["how"]) for r in b["rows"]} == {
        (d, h) for d in ("float32", "bfloat16") for h in ("alone", "all at once", "host embeddings")
    }
    assert all(r["identical"] for r in b["rows"] if r["dtype"] == "float32")
    c = parts["c"]["figures"]
    assert [(r["batch"], r["context"]) for r in c["rows"]] == [(1, 32), (1, 64), (2, 32), (2, 64)]
    assert all(r["eager_ms"] > 0 and r["roofline_ms"] > 0 for r in c["rows"])
    assert c["graphs"] == "CUDA graphs need CUDA" and "with CUDA graphs: skipped" in stdout
    d = parts["d"]["figures"]
    assert [r["tokens"] for r in d["rows"]] == [40, 50] and all(r["tflops"] > 0 for r in d["rows"])
    e = parts["e"]["figures"]
    assert [r["tiles"] for r in e["rows"]] == [1, 2] and e["batching_gain"] > 0
    f = parts["f"]["figures"]
    assert f["ours"]["failed"] == 0 and f["ours"]["output_tokens"] == f["transformers"]["output_tokens"] == 12
    assert f["ratio_output_tokens_per_s"] > 0


# ---- the driver: failures, hangs and the time budget ------------------------------------------------------

FAKES = {
    "fine.py": """
        import sys
        from gpu_part import PartResult, run_part
        sys.exit(run_part("fine", lambda ctx: PartResult(True, "all good", {"x": 1}), needs_cuda=False))
    """,
    "boom.py": """
        import sys
        from gpu_part import run_part
        def body(ctx):
            raise RuntimeError("boom in the part")
        sys.exit(run_part("boom", body, needs_cuda=False))
    """,
    "crash.py": """
        import sys
        print("dying without a result")
        sys.exit(3)
    """,
    "hang.py": """
        import subprocess, sys, time
        from pathlib import Path
        child = subprocess.Popen(["sleep", "600"])  # a service the part started
        Path(sys.argv[sys.argv.index("--out") + 1]).with_suffix(".pid").write_text(str(child.pid))
        time.sleep(600)
    """,
}


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    for name, body in FAKES.items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    parts = [
        gpu_check_all.Part("b", "boom", "boom.py", 60),
        gpu_check_all.Part("c", "crash", "crash.py", 60),
        gpu_check_all.Part("d", "hang", "hang.py", 3),
        gpu_check_all.Part("e", "fine", "fine.py", 60),
    ]
    monkeypatch.setattr(gpu_check_all, "HERE", tmp_path)
    monkeypatch.setattr(gpu_check_all, "BY_KEY", {p.key: p for p in parts})
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "benchmarks"))
    return tmp_path


def test_a_failing_crashing_or_hanging_part_is_reported_and_the_rest_still_run(fake_parts, capsys):
    out, work = fake_parts / "out", fake_parts / "work"
    assert gpu_check_all.main(["--out", str(out), "--work", str(work), "--parts", "b,c,d,e", "--cpu-smoke"]) == 1
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert {k: p["status"] for k, p in parts.items()} == {"b": "FAILED", "c": "FAILED", "d": "FAILED", "e": "ok"}
    assert "RuntimeError: boom in the part" in parts["b"]["error"]
    assert parts["c"]["headline"] == "exit status 3, no result written" and "dying" in parts["c"]["error"]
    assert parts["d"]["headline"] == "timed out after 3 s" and parts["d"]["seconds"] < 30
    assert (parts["e"]["headline"], parts["e"]["figures"]) == ("all good", {"x": 1})
    pid = int((work / "d.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the hung part's whole process group was ended
        os.kill(pid, 0)
    printed = capsys.readouterr().out
    assert "part b FAILED:" in printed and "| e. fine | ok |" in printed


def test_the_budget_caps_each_part_and_skips_what_it_cannot_fit(fake_parts):
    assert gpu_check_all.part_timeout(150, 0, 480, 5) == 150
    assert gpu_check_all.part_timeout(150, 400, 480, 2) == 40  # 80 s left, 20 s kept for each later part
    out = fake_parts / "out"
    args = ["--out", str(out), "--work", str(fake_parts / "work"), "--parts", "e", "--total-budget-s", "10"]
    assert gpu_check_all.main([*args, "--cpu-smoke"]) == 0
    part = json.loads((out / "results.json").read_text())["parts"]["e"]
    assert (part["status"], part["headline"]) == ("skipped", "skipped: time budget spent")
