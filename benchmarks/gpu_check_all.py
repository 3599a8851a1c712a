"""The device check's driver (run by benchmarks/gpu_check.sh): each part in its own process group under a
timeout, one markdown table at the end, and results.json in --out.

Parts (docs/benchmarks.md, "GPU"):
  a  kernels: Triton attention kernels against the references, then speed against SDPA and the measured
     copy bandwidth (gpu_check.py; without CUDA its correctness runs under the Triton interpreter)
  b  engine parity: our decoder engine against transformers on the model card's chats (gpu_engine_check.py)
  c  14B-shaped decode step, eager and CUDA graphs, against the bandwidth roofline (gpu_decode_step.py)
  d  14B-shaped prefill throughput against the bf16 peak (gpu_prefill.py)
  e  the vision tower at the InternViT-300M shape, 1/8/32 tiles per forward (gpu_vision.py)
  f  the stack end to end (encoder + decoder processes) against transformers' generate (gpu_stack.py)
  q  4-bit weights (bitsandbytes) against transformers' 4-bit model (gpu_quant_check.py)

A part that fails or hangs is reported (its error and output tail) and the next one runs. The whole run
keeps within --total-budget-s (default 450 s: with the setup, under 8 minutes): a part gets its own
timeout or what is left after reserving a little for the parts still to come, whichever is less.
Without CUDA, parts b-f are skipped ("skipped: no CUDA") unless --cpu-smoke runs their tiny CPU versions.
Exit status 1 when a part FAILED, else 0.

results.json: "parts" (per part: title, status, seconds, headline, figures, error, exit_status), "order",
"environment" (device, versions, modules that are not importable), "total_s", "budget_s"; its other
top-level keys are part a's full results (correctness, prefill, decode, tuning, skipped, copy_gbps), as
gpu_check.py wrote them before the other parts existed.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESERVE_S = 20  # kept back for each part still to run
MIN_PART_S = 15  # a part is not started with less


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    script: str
    timeout_s: int
    needs_cuda: bool = True
    cpu_timeout_s: int | None = None  # without CUDA, when it differs (the Triton interpreter is slow)


PARTS = [
    Part("a", "kernels", "gpu_check.py", 140, needs_cuda=False, cpu_timeout_s=280),
    Part("b", "engine vs transformers", "gpu_engine_check.py", 150),
    Part("c", "14B decode step", "gpu_decode_step.py", 150),
    Part("d", "14B prefill", "gpu_prefill.py", 90),
    Part("e", "vision tower", "gpu_vision.py", 75),
    Part("f", "stack end to end", "gpu_stack.py", 240),
    Part("q", "4-bit weights", "gpu_quant_check.py", 120, needs_cuda=False),
]
BY_KEY = {p.key: p for p in PARTS}


def default_parts() -> str:
    keys = [p.key for p in PARTS]
    if os.environ.get("SKIP_QUANT_CHECK", "0") == "1":
        keys.remove("q")
    return ",".join(keys)


def select(spec: str) -> list[Part]:
    keys = [k.strip().lower() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; parts are {', '.join(BY_KEY)}")
    return [BY_KEY[k] for k in BY_KEY if k in keys]  # always in a..f, q order


def part_timeout(own_s: float, elapsed_s: float, budget_s: float, parts_after: int) -> float:
    """A part's timeout: its own, or what the budget leaves after reserving RESERVE_S per later part."""
    return min(own_s, budget_s - elapsed_s - RESERVE_S * parts_after)


def run_command(cmd: list[str], timeout_s: float, tail_lines: int = 40) -> tuple[int | None, list[str]]:
    """Run cmd in its own process group, echoing its output; on timeout end that group (the part and any
    service it started). Returns (exit status or None on timeout, the last lines of output)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True
    )
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)

    def pump():
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        rc = None
        _end_group(proc)
    reader.join(timeout=5)
    return rc, list(tail)


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # the group this driver started for the part
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def kernels_summary(res: dict, rc: int | None) -> dict:
    """Part a's row from gpu_check.py's results.json."""
    rows = res.get("correctness", [])
    good = sum(r["ok"] for r in rows)
    where = "native" if "interpreter" not in str(res.get("device", "")) else "Triton interpreter"
    parts = [f"correctness {good}/{len(rows)} ({where})"]
    figures = {"correctness_ok": good, "correctness_rows": len(rows), "copy_gbps": res.get("copy_gbps")}
    if res.get("copy_gbps"):
        parts.append(f"copy {res['copy_gbps']:.0f} GB/s")
    for kind, key, unit in (("prefill", "ratio", "x SDPA"), ("decode", "ours_vs_copy", "of copy")):
        values = sorted(r[key] for r in res.get(kind, []) if r.get(key))
        if values:
            figures[f"{kind}_{key}_median"] = values[len(values) // 2]
            parts.append(f"{kind} median {values[len(values) // 2]:.2f} {unit}")
    skipped = res.get("skipped") or []
    if skipped:
        figures["skipped_rows"] = skipped
        if skipped == ["timing: no CUDA device"]:
            parts.append("timing skipped: no CUDA")
        else:
            parts.append(f"{len(skipped)} timed rows skipped (first: {skipped[0][:80]})")
    ok = rc == 0 and bool(rows) and good == len(rows)
    return {"status": "ok" if ok else "FAILED", "headline": "; ".join(parts), "figures": figures}


def quant_summary(path: Path, rc: int | None, tail: list[str]) -> dict:
    if not path.exists():
        if rc == 0:
            said = next((line for line in reversed(tail) if "skipped" in line), "skipped")
            return {"status": "skipped", "headline": said.strip().replace("4-bit check skipped", "skipped")}
        return {"status": "FAILED", "headline": "no quant_check.json", "error": "\n".join(tail[-20:])}
    res = json.loads(path.read_text())
    same = sum(r["identical"] for r in res["rows"])
    headline = f"4-bit tokens = transformers' 4-bit {same}/{len(res['rows'])} on {res['device']}"
    return {"status": "ok" if res["ok"] and rc == 0 else "FAILED", "headline": headline, "figures": res}


def run_part(part: Part, args, extra: list[str], work: Path, timeout_s: float, cuda: bool = True) -> dict:
    py = sys.executable
    if part.key == "a":  # on a GPU its timed rows stop in time to leave room for the tables
        budget = [] if "--budget-s" in extra or not cuda else ["--budget-s", str(int(max(20, timeout_s - 45)))]
        cmd = [py, str(HERE / part.script), "--out", str(work / "a"), *budget, *extra]
    elif part.key == "q":
        cmd = [py, str(HERE / part.script), "--out", str(args.out)]
    else:
        cmd = [py, str(HERE / part.script), "--out", str(work / f"{part.key}.json"), "--work", str(work / part.key)]
        cmd += ["--cpu-smoke"] if args.cpu_smoke else []
    started = time.monotonic()
    rc, tail = run_command(cmd, timeout_s)
    seconds = round(time.monotonic() - started, 1)
    if rc is None:
        row = {"status": "FAILED", "headline": f"timed out after {timeout_s:.0f} s", "error": "\n".join(tail[-20:])}
    elif part.key == "a":
        path = work / "a" / "results.json"
        row = kernels_summary(json.loads(path.read_text()), rc) if path.exists() else {}
        row["details"] = json.loads(path.read_text()) if path.exists() else None
    elif part.key == "q":
        row = quant_summary(args.out / "quant_check.json", rc, tail)
    else:
        path = work / f"{part.key}.json"
        row = json.loads(path.read_text()) if path.exists() else {}
    if not row.get("status"):
        row = {"status": "FAILED", "headline": f"exit status {rc}, no result written", "error": "\n".join(tail[-20:])}
    if row["status"] == "FAILED" and not row.get("error"):
        row["error"] = "\n".join(tail[-20:])
    return {"title": part.title, "figures": {}, "error": "", **row, "seconds": seconds, "exit_status": rc}


# What parts b-f and q import beyond torch and triton (the device image lacks several: gpu_wheels.sh).
NEEDED_MODULES = [
    "transformers", "tokenizers", "safetensors", "PIL", "av", "grpc", "google.protobuf", "grpc_health",
    "grpc_reflection", "opentelemetry.sdk", "redis", "starlette", "uvicorn", "aiohttp", "llguidance",
    "internvl_serve",
]  # fmt: skip


def missing_modules(names: list[str] = NEEDED_MODULES) -> list[str]:
    import importlib.util

    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def environment(cuda: bool) -> dict:
    import torch

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu (no CUDA)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "cuda": torch.version.cuda,
        "missing_modules": missing_modules(),
    }


def summary_table(order: list[str], parts: dict) -> str:
    lines = ["| part | status | seconds | headline figures |", "|---|---|---|---|"]
    for key in order:
        row = parts[key]
        headline = str(row.get("headline", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {key}. {row['title']} | {row['status']} | {row['seconds']:.0f} | {headline} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--parts", default=os.environ.get("PARTS") or default_parts(), help="e.g. a,b,c")
    parser.add_argument("--cpu-smoke", action="store_true", default=os.environ.get("CPU_SMOKE") == "1")
    parser.add_argument("--total-budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 450)))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to part a (gpu_check.py)
    import torch

    cuda = torch.cuda.is_available()
    chosen = select(args.parts)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="internvl-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment(cuda)
    print(
        f"device check on {env['device']}: parts {','.join(p.key for p in chosen)}, budget {args.total_budget_s:.0f} s"
    )
    start = time.monotonic()
    results: dict[str, dict] = {}
    runnable = [p for p in chosen if cuda or args.cpu_smoke or not p.needs_cuda]
    for part in chosen:
        if part not in runnable:
            results[part.key] = {
                "title": part.title,
                "status": "skipped",
                "seconds": 0.0,
                "headline": "skipped: no CUDA",
            }
            results[part.key] |= {"figures": {}, "error": ""}
            continue
        after = len(runnable) - runnable.index(part) - 1
        own_s = part.timeout_s if cuda else part.cpu_timeout_s or part.timeout_s
        timeout_s = part_timeout(own_s, time.monotonic() - start, args.total_budget_s, after)
        if timeout_s < min(MIN_PART_S, own_s):
            results[part.key] = {"title": part.title, "status": "skipped", "seconds": 0.0, "figures": {}, "error": ""}
            results[part.key]["headline"] = "skipped: time budget spent"
            continue
        print(f"\n=== part {part.key}: {part.title} (timeout {timeout_s:.0f} s) ===", flush=True)
        results[part.key] = run_part(part, args, extra, work, timeout_s, cuda)
    total_s = round(time.monotonic() - start, 1)
    order = [p.key for p in chosen]
    table = summary_table(order, results)
    for key in order:
        if results[key]["status"] == "FAILED":
            print(f"\npart {key} FAILED:\n{results[key].get('error') or results[key]['headline']}")
    header = f"## Device check (`benchmarks/gpu_check.sh`) on {env['device']}, {total_s:.0f} s"
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("device", "missing_modules"))
    if env["missing_modules"]:
        versions += f"; not importable: {', '.join(env['missing_modules'])} (benchmarks/gpu_wheels.sh)"
    markdown = f"{header}\n\n{versions}\n\n{table}\n"
    print("\n" + markdown)
    kernels = results.get("a", {}).pop("details", None) or {}
    out = {**kernels, "environment": env, "total_s": total_s, "budget_s": args.total_budget_s}
    out |= {"order": order, "parts": results}
    (args.out / "results.json").write_text(json.dumps(out, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(markdown)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'gpu_check.md'}")
    if args.work is None and not os.environ.get("GPU_CHECK_KEEP_WORK"):
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["status"] == "FAILED" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
