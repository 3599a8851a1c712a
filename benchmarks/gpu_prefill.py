"""Part d of the device check: prefill throughput of the 14B-shaped model of part c (Qwen2.5-14B layers, 4
of them, random bf16 weights) through our ModelRunner: one fresh prompt of 2k, 4k and 8k tokens, and four
prompts of 2k in one step. Tokens/s and achieved TFLOP/s against the FLOP roofline:

    FLOPs = 2 * matmul params * tokens (every layer) + 2 * hidden * vocab per sampled row (lm_head)
            + causal attention 4 * Hq * D * n(n+1)/2 per layer and prompt
    peak  = the GPU's dense bf16 TFLOP/s (gpu_part.PEAK_BF16_TFLOPS; "unknown peak" for other GPUs)

    python benchmarks/gpu_prefill.py --out d.json [--cpu-smoke]
"""

from __future__ import annotations

import sys

import torch
from gpu_decode_step import LAYERS
from gpu_model import QWEN25_14B, TOY, Shape, build_model, kv_cache_for, prefill_step_inputs, text_config
from gpu_part import (
    PartContext,
    PartResult,
    attempt,
    flops_ms,
    markdown_table,
    peak_bf16_tflops,
    run_part,
    wall_ms,
)

PROMPTS = [[2048], [4096], [8192], [2048] * 4]
SMOKE_PROMPTS = [[40], [17, 33]]


def run(ctx: PartContext) -> PartResult:
    from internvl_serve.decoder.engine.model_runner import ModelRunner

    prompts = SMOKE_PROMPTS if ctx.smoke else PROMPTS
    layers = 2 if ctx.smoke else LAYERS
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    cfg = text_config(TOY if ctx.smoke else QWEN25_14B, layers)
    shape = Shape.of(cfg)
    peak = peak_bf16_tflops(ctx.device_name) if ctx.cuda else None
    num_blocks = max(sum(-(-n // 16) for n in p) for p in prompts) + max(len(p) for p in prompts)
    model = build_model(cfg, ctx.device, dtype)
    runner = ModelRunner(model, kv_cache_for(cfg, num_blocks, ctx.device, dtype, fill_seed=None), ctx.device)
    errors: list[str] = []
    rows = []
    for lengths in prompts:
        inputs = prefill_step_inputs(lengths, shape.vocab)
        flops = shape.prefill_flops(lengths, num_logits=len(lengths))
        ms = attempt(
            errors,
            f"prefill {lengths}",
            lambda: wall_ms(lambda: runner.execute(inputs), ctx.cuda, warmup=2, reps=3 if ctx.smoke else 8),
        )
        row = {"prompts": _label(lengths), "tokens": sum(lengths), "tflop": flops / 1e12, "ms": ms}
        if ms:
            row["tokens_per_s"] = sum(lengths) / ms * 1e3
            row["tflops"] = flops / ms / 1e9
            if peak:
                row["roofline_ms"] = flops_ms(flops, peak)
                row["vs_peak"] = row["tflops"] / peak
        rows.append(row)
    print(
        "\n"
        + markdown_table(
            ["prompts", "tokens", "TFLOP", "ms", "tokens/s", "TFLOP/s", "peak roofline ms", "of peak"],
            [
                [r["prompts"], r["tokens"], r["tflop"], r["ms"], r.get("tokens_per_s"), r.get("tflops")]
                + [r.get("roofline_ms"), r.get("vs_peak")]
                for r in rows
            ],
        )
    )
    figures = {
        "shape": "toy (CPU smoke)" if ctx.smoke else "Qwen2.5-14B layers",
        "layers": layers,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_bf16_tflops": peak if peak else "unknown peak",
        "flops": "2 * matmul params * tokens + 2 * hidden * vocab * prompts + 4 * Hq * D * n(n+1)/2 * layers",
        "rows": rows,
    }
    ok = not errors and all(r["ms"] for r in rows)
    headline = f"{layers} {'toy' if ctx.smoke else '14B'} layers; " + _headline(rows, peak, ctx.cuda)
    return PartResult(ok, headline, figures, "; ".join(errors))


def _label(lengths: list[int]) -> str:
    return (
        f"{len(lengths)} x {lengths[0]}" if len(set(lengths)) == 1 and len(lengths) > 1 else "+".join(map(str, lengths))
    )


def _headline(rows, peak, cuda) -> str:
    done = [r for r in rows if r.get("tflops")]
    if not done:
        return "no prefill ran"
    parts = [f"{r['prompts']}: {r['tokens_per_s']:.0f} tok/s, {r['tflops']:.3g} TFLOP/s" for r in done[:3]]
    if peak:
        best = max(done, key=lambda r: r["tflops"])
        parts.append(f"best {best['vs_peak']:.0%} of {peak:.0f} peak")
    elif cuda:
        parts.append("unknown peak")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(run_part("d", run))
