"""GPU check of the Triton attention kernels: correctness against the references, then speed against
torch SDPA and against a device-to-device copy measured in the same run. Prints tables, writes JSON.

Without CUDA it runs the correctness part under the Triton interpreter (fp32, fp16) and skips timing.

Formulas (stated in results.json too):
- prefill TFLOP/s = 4 * Hq * D * sum over queries of the keys it sees (ctx + t + 1) / time: QK^T and PV,
  2 FLOPs per multiply-add, causal pairs only (SDPA with is_causal does the same work).
- decode GB/s = (K and V read: 2 * sum(seq_len) * Hkv * D + q read and out written: 2 * B * Hq * D)
  * bytes per element / time.
- copy GB/s = 2 * nbytes / time (read + write) of dst.copy_(src) on a 1 GiB buffer.
Timings replay a CUDA graph of one call (no Python launch overhead) after flushing L2; median of reps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"14B": (40, 8, 128), "1B": (14, 2, 64)}  # (num_q_heads, num_kv_heads, head_dim)
# (atol, rtol) against the fp32 reference: 16-bit kernels round P before P @ V and round the output.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
BLOCK = 16


def load_kernels():
    """kernels/ as a package loaded by path: no install needed, and the repo root stays off sys.path
    (it holds a folder named `kernels`, which is also a Hugging Face package name)."""
    spec = importlib.util.spec_from_file_location(
        "gpu_check_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def paged_cache(K, seq_lens, hkv, d, dtype, dev, shuffle=True):
    """A NaN-filled cache whose sequences' K/V are written by write_kv_cache (checked against its ref)."""
    nblk = [-(-n // BLOCK) for n in seq_lens]
    total = sum(nblk) + 1
    order = torch.randperm(total, device=dev) if shuffle else torch.arange(total, device=dev)
    bt = torch.full((len(seq_lens), max(nblk) + 1), int(order[-1]), dtype=torch.int32, device=dev)
    slots, used = [], 0
    for i, (n, b) in enumerate(zip(seq_lens, nblk)):
        bt[i, :b] = order[used : used + b].to(torch.int32)
        used += b
        pos = torch.arange(n, device=dev)
        slots.append(bt[i, pos // BLOCK].long() * BLOCK + pos % BLOCK)
    slots = torch.cat(slots)
    k_cache = torch.full((total, BLOCK, hkv, d), float("nan"), dtype=dtype, device=dev)
    v_cache = k_cache.clone()
    k = torch.randn(len(slots), hkv, d, device=dev).to(dtype)
    v = torch.randn(len(slots), hkv, d, device=dev).to(dtype)
    K.write_kv_cache(k, v, k_cache, v_cache, slots)
    ref_k, ref_v = torch.full_like(k_cache, float("nan")), torch.full_like(v_cache, float("nan"))
    K.write_kv_cache_ref(k, v, ref_k, ref_v, slots)
    exact = all(torch.equal(a.nan_to_num(7), b.nan_to_num(7)) for a, b in ((k_cache, ref_k), (v_cache, ref_v)))
    return k_cache, v_cache, bt, torch.tensor(seq_lens, dtype=torch.int32, device=dev), exact


def correctness(K, dev, dtypes, q_lens, ctxs, decode_lens):
    rows = []
    for name, (hq, hkv, d) in SHAPES.items():
        for dtype in dtypes:
            seq_lens = [q + c for q, c in zip(q_lens, ctxs)]
            kc, vc, bt, sl, exact = paged_cache(K, seq_lens, hkv, d, dtype, dev)
            q = torch.randn(sum(q_lens), hq, d, device=dev).to(dtype)
            cu = torch.tensor([0] + q_lens, device=dev).cumsum(0).to(torch.int32)
            args = (q, kc, vc, cu, sl, bt, d**-0.5)
            rows.append(_row("write_kv_cache", name, dtype, None, None, exact))
            rows.append(_row("prefill", name, dtype, K.prefill_attention(*args), K.prefill_attention_ref(*args)))
            kc, vc, bt, sl, _ = paged_cache(K, decode_lens, hkv, d, dtype, dev)
            q = torch.randn(len(decode_lens), hq, d, device=dev).to(dtype)
            args = (q, kc, vc, sl, bt, d**-0.5)
            want = K.decode_attention_ref(*args)
            for splits in (None, 1, 7):
                got = K.decode_attention(*args, num_splits=splits)
                rows.append(_row(f"decode splits={splits or 'auto'}", name, dtype, got, want))
    return rows


def _row(kernel, shape, dtype, got, want, exact=None):
    """ok when every element is within atol + rtol * |want| (NaN never is); exact for plain copies."""
    row = {"kernel": kernel, "shape": shape, "dtype": str(dtype).replace("torch.", "")}
    if exact is not None:
        return row | {"max_abs_err": 0.0 if exact else None, "atol_rtol": "exact", "ok": exact}
    atol, rtol = TOL[dtype]
    diff = (got.float() - want.float()).abs().nan_to_num(float("inf"))
    worst = (diff / (atol + rtol * want.float().abs())).max().item()
    return row | {"max_abs_err": diff.max().item(), "atol_rtol": f"{atol:g}/{rtol:g}", "ok": worst <= 1.0}


class Timer:
    """Median time of one call, replayed from a CUDA graph with L2 flushed before each replay."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda") if cuda else None

    def __call__(self, fn, target_ms=150.0):
        if not self.cuda:  # CPU smoke run: exercises the code, measures nothing useful
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3, "cpu"
        for _ in range(3):
            fn()  # compiles and warms up before any capture
        torch.cuda.synchronize()
        mode, replay = "graph", fn
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            replay = graph.replay
        except Exception:  # noqa: BLE001  (a backend that cannot be captured is timed eagerly)
            mode = "eager"
            torch.cuda.synchronize()
        times = [self._once(replay) for _ in range(3)]
        reps = int(min(100, max(5, target_ms / max(min(times), 1e-3))))
        times += [self._once(replay) for _ in range(reps)]
        times.sort()
        return times[len(times) // 2], mode

    def _once(self, fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.flush.zero_()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def sdpa(q, k, v, causal, scale):
    """SDPA on dense [B, H, L, D] with GQA, flash backend when it accepts the call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)

    def default():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)

    try:
        flash()
        return flash, "flash"
    except RuntimeError:
        return default, "default"


def bench_prefill(K, timer, name, b, L, dtype, dev, cfg=None):
    hq, hkv, d = SHAPES[name]
    n = b * L
    kc = torch.randn(n // BLOCK, BLOCK, hkv, d, device=dev, dtype=dtype)  # no fp32 temporary: caches are big
    vc = torch.randn_like(kc)
    bt = torch.randperm(n // BLOCK, device=dev).to(torch.int32).view(b, L // BLOCK)
    q = torch.randn(n, hq, d, device=dev, dtype=dtype)
    out = torch.empty_like(q)
    cu = torch.arange(b + 1, device=dev, dtype=torch.int32) * L
    sl = torch.full((b,), L, dtype=torch.int32, device=dev)
    flops = 4 * hq * d * b * L * (L + 1) / 2
    ms, mode = timer(lambda: K.prefill_attention(q, kc, vc, cu, sl, bt, d**-0.5, out=out, config=cfg))
    row = {"shape": name, "batch": b, "context": L, "ours_ms": ms, "ours_tflops": flops / ms / 1e9, "timing": mode}
    if cfg is None:
        # SDPA gets the same keys already gathered into dense tensors (its gather is not timed)
        gather = lambda c: c[bt.long()].reshape(b, L, hkv, d).transpose(1, 2).contiguous()  # noqa: E731
        qd, kd, vd = q.view(b, L, hq, d).transpose(1, 2).contiguous(), gather(kc), gather(vc)
        fn, backend = sdpa(qd, kd, vd, True, d**-0.5)
        ms, _ = timer(fn)
        row |= {
            "sdpa_ms": ms,
            "sdpa_tflops": flops / ms / 1e9,
            "sdpa_backend": backend,
            "ratio": row["ours_tflops"] / (flops / ms / 1e9),
        }
    return row


def bench_decode(K, timer, name, b, L, dtype, dev, copy_gbps, cfg=None, splits=None):
    hq, hkv, d = SHAPES[name]
    n = b * L
    kc = torch.randn(n // BLOCK, BLOCK, hkv, d, device=dev, dtype=dtype)
    vc = torch.randn_like(kc)
    bt = torch.arange(n // BLOCK, device=dev, dtype=torch.int32).view(b, L // BLOCK)  # in order: see below
    q = torch.randn(b, hq, d, device=dev, dtype=dtype)
    out = torch.empty_like(q)
    sl = torch.full((b,), L, dtype=torch.int32, device=dev)
    ws = K.DecodeWorkspace.allocate(b, hq, d, K.DEFAULT_MAX_SPLITS, device=dev)
    nbytes = (2 * n * hkv * d + 2 * b * hq * d) * q.element_size()
    num_splits = splits or K.choose_num_splits(b, hkv, L, _num_sms(dev))
    ms, mode = timer(
        lambda: K.decode_attention(q, kc, vc, sl, bt, d**-0.5, workspace=ws, out=out, num_splits=num_splits, config=cfg)
    )
    gbps = nbytes / ms / 1e6
    row = {
        "shape": name,
        "batch": b,
        "context": L,
        "splits": num_splits,
        "ours_ms": ms,
        "ours_gbps": gbps,
        "ours_vs_copy": gbps / copy_gbps if copy_gbps else None,
        "timing": mode,
    }
    if cfg is None and splits is None:
        # Dense gathered K/V for SDPA; with in-order blocks the gather is a view, copied when memory allows.
        dense = lambda c: c.view(b, L, hkv, d).transpose(1, 2)  # noqa: E731
        free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else 1 << 62
        copied = free > 3 * kc.nbytes
        kd, vd = (dense(kc).contiguous(), dense(vc).contiguous()) if copied else (dense(kc), dense(vc))
        fn, backend = sdpa(q.unsqueeze(2), kd, vd, False, d**-0.5)
        ms, _ = timer(fn)
        row |= {
            "sdpa_ms": ms,
            "sdpa_gbps": nbytes / ms / 1e6,
            "sdpa_backend": backend + ("" if copied else " (view)"),
            "ratio": gbps / (nbytes / ms / 1e6),
        }
    return row


def _num_sms(dev):
    return torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 132


def copy_bandwidth(timer, dev, nbytes):
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms, _ = timer(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def table(title, rows, cols):
    print(f"\n### {title}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")


def _fmt(v):
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out")
    parser.add_argument("--budget-s", type=float, default=400.0, help="stop starting timed rows after this")
    parser.add_argument("--cpu-timing-smoke", action="store_true", help="run tiny timed rows on the CPU (code check)")
    args = parser.parse_args()
    start = time.monotonic()
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # before the first launch imports triton
    K = load_kernels()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    res = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "formulas": __doc__.split("Formulas")[1].strip(),
        "skipped": [],
    }
    if cuda:  # native bf16 and fp16 at the real head shapes, lengths off the block grid
        res["correctness"] = correctness(
            K, dev, [torch.bfloat16, torch.float16], [300, 1, 517, 64], [0, 1500, 3000, 77], [1, 100, 4097, 16000, 33]
        )
    else:
        res["correctness"] = correctness(K, dev, [torch.float32, torch.float16], [37, 1, 12], [0, 45, 20], [1, 40, 70])
    table(
        "correctness (max abs error vs the fp32 PyTorch reference)",
        res["correctness"],
        ["kernel", "shape", "dtype", "max_abs_err", "atol_rtol", "ok"],
    )
    ok = all(r["ok"] for r in res["correctness"])
    if cuda or args.cpu_timing_smoke:
        run_timing(K, dev, Timer(cuda), res, start, args.budget_s, smoke=not cuda)
    else:
        print("\nno CUDA device: timing skipped (correctness ran under TRITON_INTERPRET=1)")
        res["skipped"].append("timing: no CUDA device")
    res["wall_s"] = time.monotonic() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwrote {args.out / 'results.json'} ({res['wall_s']:.0f} s); correctness {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def run_timing(K, dev, timer, res, start, budget_s, smoke):
    dtype = torch.bfloat16 if not smoke else torch.float32
    batches, contexts = ([1, 8, 32, 64], [1024, 4096, 16384]) if not smoke else ([2], [48])
    res["copy_gbps"] = copy_bandwidth(timer, dev, (1 << 30) if not smoke else (1 << 20))
    print(f"\ndevice-to-device copy: {res['copy_gbps']:.0f} GB/s")
    res["prefill"], res["decode"], res["tuning"] = [], [], []

    def attempt(kind, fn, *a, **kw):
        if time.monotonic() - start > budget_s:
            res["skipped"].append(f"{kind} {a} {kw}: time budget")
            return
        try:
            res[kind].append(fn(K, timer, *a, dtype=dtype, dev=dev, **kw))
        except Exception as exc:  # noqa: BLE001  (one failing row must not lose the others)
            res["skipped"].append(f"{kind} {a} {kw}: {type(exc).__name__}: {exc}"[:300])
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    for name in SHAPES:
        for b in batches:
            for L in contexts:
                if b * L <= (131072 if not smoke else 4096):
                    attempt("prefill", bench_prefill, name, b, L)
                attempt("decode", bench_decode, name, b, L, copy_gbps=res["copy_gbps"])
    tuning(K, attempt, smoke)
    cols = ["shape", "batch", "context", "ours_tflops", "sdpa_tflops", "ratio", "sdpa_backend", "timing"]
    table(f"prefill, causal, fresh ({dtype}): TFLOP/s", res["prefill"], cols)
    cols = [
        "shape",
        "batch",
        "context",
        "splits",
        "ours_gbps",
        "sdpa_gbps",
        "ratio",
        "ours_vs_copy",
        "sdpa_backend",
        "timing",
    ]
    table(f"decode ({dtype}): GB/s; copy = {res['copy_gbps']:.0f} GB/s", res["decode"], cols)
    table("tuning candidates", res["tuning"], ["kind", "shape", "config", "splits", "ours_tflops", "ours_gbps"])
    for line in res["skipped"]:
        print("skipped:", line)


def tuning(K, attempt, smoke):
    """Alternative configs at one shape each, so one GPU run also tells whether config.py should change."""
    b_p, L_p, b_d, L_d = (8, 4096, 32, 4096) if not smoke else (1, 32, 2, 32)
    keep = 1 if smoke else None  # the CPU smoke run only checks that each kind of row runs
    for name in SHAPES:
        for m, n, w, s in [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)][:keep]:
            cfg = K.PrefillConfig(block_m=m, block_n=n, num_warps=w, num_stages=s)
            attempt("tuning", _tag(bench_prefill, "prefill", cfg), name, b_p, L_p, cfg=cfg)
        for n, w, s in [(64, 4, 2), (64, 4, 3), (32, 4, 4), (128, 8, 2)][:keep]:
            cfg = K.DecodeConfig(block_n=n, num_warps=w, num_stages=s)
            attempt("tuning", _tag(bench_decode, "decode", cfg), name, b_d, L_d, copy_gbps=None, cfg=cfg)
        for splits in (1, 2, 4, 8) if not smoke else (2,):
            attempt("tuning", _tag(bench_decode, "decode", None), name, b_d, L_d, copy_gbps=None, splits=splits)


def _tag(fn, kind, cfg):
    def run(*a, **kw):
        return {"kind": kind, "config": str(cfg) if cfg else "default"} | fn(*a, **kw)

    return run


def _triton_version():
    import triton  # only after main() has decided TRITON_INTERPRET

    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
