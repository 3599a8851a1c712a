"""What the parts of the device check (gpu_check_all.py) share: how a part runs and reports, timing, random
weights on the device, the bf16 peak of known GPUs, and roofline arithmetic.

A part is a script `python benchmarks/gpu_<part>.py --out FILE.json [--cpu-smoke]`. Its body gets a
`PartContext` and returns a `PartResult`; `run_part` turns that (or the exception it raised) into the JSON
the driver reads: {"status": ok|FAILED|skipped, "seconds", "headline", "figures", "error"}. Without CUDA a
part is skipped ("skipped: no CUDA") unless --cpu-smoke asks for its tiny CPU version, which runs the same
code at toy sizes so the harness is checked before device minutes are spent on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from report import table

# Dense bf16 tensor-core peaks (TFLOP/s), most specific name first: H100 SXM and H200 share the compute.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like torch.cuda.get_device_name(); None when not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def roofline_ms(nbytes: float, gbps: float) -> float:
    """Time to move `nbytes` at `gbps` GB/s (1e9 bytes), in ms."""
    return nbytes / (gbps * 1e9) * 1e3


def flops_ms(flops: float, tflops: float) -> float:
    """Time to do `flops` at `tflops` TFLOP/s, in ms."""
    return flops / (tflops * 1e12) * 1e3


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """report.table with every cell through fmt (None as "-", floats to 3 significant digits)."""
    return table(headers, [[fmt(c) for c in row] for row in rows])


@dataclass
class PartContext:
    cuda: bool
    smoke: bool  # the tiny CPU version (or toy sizes on a GPU)
    device: str  # "cuda" or "cpu"
    device_name: str
    work: Path  # scratch space for this part (checkpoints, logs)


@dataclass
class PartResult:
    ok: bool
    headline: str
    figures: dict = field(default_factory=dict)
    error: str = ""  # what went wrong inside a part that still produced figures
    skipped: str = ""  # non-empty: the part did not run, and why


def wall_ms(fn: Callable[[], object], cuda: bool, warmup: int = 2, reps: int = 10) -> float:
    """Median wall time of fn() in ms, the device synchronised after each call (launches and host work
    included: what a serving step costs)."""
    import torch

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def init_random_(module, std: float = 0.02, seed: int = 0) -> None:
    """Random weights in place, as a model is initialised for training: Linear/conv weights and embeddings
    normal(0, std), biases 0, norm weights 1 (LayerNorm biases 0), InternViT layer scales 0.1."""
    import torch

    gen_device = next(module.parameters()).device
    gen = torch.Generator(device=gen_device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif "norm" in name and leaf == "weight":
                param.fill_(1.0)
            elif leaf.startswith("lambda_"):
                param.fill_(0.1)
            else:
                param.normal_(0.0, std, generator=gen)


def error_text(exc: BaseException, limit: int = 2000) -> str:
    """The exception and the innermost frames of its traceback, short enough for a table's JSON."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines[-6:]).strip()
    return text[-limit:]


def run_part(name: str, body: Callable[[PartContext], PartResult], needs_cuda: bool = True) -> int:
    """Parse --out/--cpu-smoke, run `body`, write the part's JSON; exit status 1 only when it FAILED."""
    parser = argparse.ArgumentParser(description=f"device check, part {name}")
    parser.add_argument("--out", type=Path, required=True, help="the part's JSON result")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the tiny CPU version without CUDA")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: beside --out)")
    args = parser.parse_args()
    started = time.monotonic()
    record: dict = {"part": name, "status": "FAILED", "headline": "", "figures": {}, "error": ""}
    try:
        import torch

        cuda = torch.cuda.is_available()
        work = args.work or args.out.parent / f"{name}-work"
        work.mkdir(parents=True, exist_ok=True)
        ctx = PartContext(
            cuda=cuda,
            smoke=args.cpu_smoke,
            device="cuda" if cuda else "cpu",
            device_name=torch.cuda.get_device_name() if cuda else "cpu",
            work=work,
        )
        if needs_cuda and not cuda and not args.cpu_smoke:
            result = PartResult(True, "", skipped="no CUDA")
        else:
            result = body(ctx)
        if result.skipped:
            record |= {"status": "skipped", "headline": f"skipped: {result.skipped}"}
        else:
            record |= {"status": "ok" if result.ok else "FAILED", "headline": result.headline}
        record |= {"figures": result.figures, "error": result.error}
    except Exception as exc:  # noqa: BLE001  (the part failed: say why, the driver goes on)
        record["error"] = error_text(exc)
        record["headline"] = f"{type(exc).__name__}: {exc}"[:200]
        print(record["error"], file=sys.stderr)
    record["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str))
    print(f"\npart {name}: {record['status']} in {record['seconds']} s: {record['headline']}")
    return 1 if record["status"] == "FAILED" else 0


def attempt(errors: list[str], label: str, fn: Callable[[], object]):
    """fn(), or None with the error noted: one failing row of a part must not lose the others."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{label}: {type(exc).__name__}: {exc}"[:500])
        print(f"{label} FAILED:\n{error_text(exc)}", file=sys.stderr)
        return None
