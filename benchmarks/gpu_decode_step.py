"""Part c of the device check: one decode step of a 14B-shaped model (Qwen2.5-14B layers, 4 of them,
random bf16 weights made on the device) through our ModelRunner, eager and replayed from CUDA graphs.

For batch 1, 8, 32, 64 at contexts 1k and 4k: ms per step (median of replays after warm-up, host work
and launches included) against the roofline = (weights read + every sequence's K/V read) / the measured
device-to-device copy bandwidth. Then, at one shape, graph logits against eager logits.

    python benchmarks/gpu_decode_step.py --out c.json [--cpu-smoke]

--cpu-smoke: 2 toy layers on the CPU, eager only (the graphs need CUDA): checks the harness.
"""

from __future__ import annotations

import sys

import torch
from gpu_model import (
    QWEN25_14B,
    TOY,
    Shape,
    build_model,
    copy_gbps,
    decode_step_inputs,
    kv_cache_for,
    text_config,
)
from gpu_part import PartContext, PartResult, attempt, markdown_table, roofline_ms, run_part, wall_ms

LAYERS = 4
BATCHES, CONTEXTS = [1, 8, 32, 64], [1024, 4096]
GRAPH_MAX_SEQS, GRAPH_SEQ_MARGIN = 64, 16
CHECK_SHAPE = (8, 1024)  # graph vs eager logits here
SMOKE = dict(layers=2, batches=[1, 2], contexts=[32, 64])


def run(ctx: PartContext) -> PartResult:
    from internvl_serve.decoder.engine.model_runner import ModelRunner

    sizes = SMOKE if ctx.smoke else dict(layers=LAYERS, batches=BATCHES, contexts=CONTEXTS)
    layers, batches, contexts = sizes["layers"], sizes["batches"], sizes["contexts"]
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    cfg = text_config(TOY if ctx.smoke else QWEN25_14B, layers)
    shape = Shape.of(cfg)
    itemsize = torch.empty((), dtype=dtype).element_size()
    gbps = copy_gbps(ctx.cuda, (1 << 30) if ctx.cuda else (1 << 20))
    print(f"device-to-device copy: {gbps:.0f} GB/s")
    max_ctx = max(contexts)
    bps = -(-(max_ctx + GRAPH_SEQ_MARGIN) // 16)
    num_blocks = max(batches) * bps + 1
    kv_gib = num_blocks * 16 * shape.kv_bytes_per_token(itemsize) / 2**30
    print(f"model: {layers} layers of Qwen2.5-14B shape, {dtype}; KV cache {num_blocks} blocks ({kv_gib:.2f} GiB)")
    model = build_model(cfg, ctx.device, dtype)
    cache = kv_cache_for(cfg, num_blocks, ctx.device, dtype)
    eager = ModelRunner(model, cache, ctx.device)
    errors: list[str] = []
    graphs, graph_note = None, "CUDA graphs need CUDA"
    if ctx.cuda:
        graphs = attempt(errors, "graph capture", lambda: _capture(model, cache, max_ctx))
        graph_note = "" if graphs is not None else "capture failed"
    graphed = None
    if graphs is not None:
        graphed = attempt(errors, "graph runner", lambda: ModelRunner(model, cache, ctx.device, graphs=graphs))
        graph_note = "" if graphed is not None else "ModelRunner(graphs=) failed"
    reps = 3 if ctx.smoke else 20
    rows = []
    for batch in batches:
        for context in contexts:
            inputs = decode_step_inputs(batch, context, shape.vocab, blocks_per_seq=bps)
            nbytes = shape.decode_bytes(batch, context, itemsize)
            row = {"batch": batch, "context": context, "roofline_ms": roofline_ms(nbytes, gbps)}
            row["eager_ms"] = attempt(
                errors,
                f"eager b={batch} ctx={context}",
                lambda: wall_ms(lambda: eager.execute(inputs), ctx.cuda, reps=reps),
            )
            if graphed is not None:
                if not graphs.can_run(inputs):
                    errors.append(f"graphs cannot run b={batch} ctx={context}")
                else:
                    row["graph_ms"] = attempt(
                        errors,
                        f"graph b={batch} ctx={context}",
                        lambda: wall_ms(lambda: graphed.execute(inputs), ctx.cuda, reps=reps),
                    )
            for mode in ("eager", "graph"):
                if row.get(f"{mode}_ms"):
                    row[f"{mode}_vs_roofline"] = row["roofline_ms"] / row[f"{mode}_ms"]
            rows.append(row)
            if ctx.cuda:
                torch.cuda.empty_cache()
    check = None
    if graphed is not None:
        check = attempt(errors, "graph vs eager", lambda: _graph_vs_eager(eager, graphed, graphs, shape))
    figures = {
        "shape": "toy (CPU smoke)" if ctx.smoke else "Qwen2.5-14B layers",
        "layers": layers,
        "dtype": str(dtype).removeprefix("torch."),
        "copy_gbps": gbps,
        "weight_bytes_read": shape.weight_bytes_read(itemsize),
        "kv_bytes_per_token": shape.kv_bytes_per_token(itemsize),
        "roofline": "(weights read + batch * context * K/V bytes per token) / measured copy GB/s",
        "rows": rows,
        "graphs": graph_note or "captured",
        "graph_vs_eager": check,
    }
    print(
        "\n"
        + markdown_table(
            ["batch", "context", "roofline ms", "eager ms", "eager/roofline", "graph ms", "graph/roofline"],
            [
                [r["batch"], r["context"], r["roofline_ms"], r.get("eager_ms"), r.get("eager_vs_roofline")]
                + [r.get("graph_ms"), r.get("graph_vs_roofline")]
                for r in rows
            ],
        )
    )
    if graph_note:
        print(f"with CUDA graphs: skipped: {graph_note}")
    ok = not errors and all(r.get("eager_ms") for r in rows) and (check is None or check["ok"])
    headline = f"{layers} {'toy' if ctx.smoke else '14B'} layers; " + _headline(rows, graph_note, check)
    return PartResult(ok, headline, figures, "; ".join(errors))


def _capture(model, cache, max_ctx):
    from internvl_serve.decoder.engine.cuda_graphs import DecodeGraphs

    graphs = DecodeGraphs(model, cache, "cuda", max_num_seqs=GRAPH_MAX_SEQS, max_seq_len=max_ctx + GRAPH_SEQ_MARGIN)
    graphs.capture()
    print(f"captured decode graphs for buckets {graphs.buckets}")
    return graphs


def _graph_vs_eager(eager, graphed, graphs, shape) -> dict:
    """The same step both ways; the eager one with the graph's host-side seq-len bound, so both pick the
    same split count and the logits should be bit-identical."""
    batch, context = CHECK_SHAPE
    bps = graphs.buffers.max_blocks
    inputs = decode_step_inputs(batch, context, shape.vocab, blocks_per_seq=bps, max_seq_len=graphs.max_seq_len)
    want = eager.execute(inputs).clone()
    got = graphed.execute(inputs).clone()
    diff = (got - want).abs().max().item()
    scale = want.abs().max().item()
    same_argmax = bool(torch.equal(got.argmax(-1), want.argmax(-1)))
    ok = same_argmax and diff <= 1e-3 * max(scale, 1.0)
    print(f"graph vs eager logits (b={batch}, ctx={context}): max abs diff {diff:.3g} (|logit| max {scale:.3g})")
    return {
        "batch": batch,
        "context": context,
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "same_argmax": same_argmax,
        "ok": ok,
    }


def _headline(rows, graph_note, check) -> str:
    big = max(rows, key=lambda r: (r["batch"], r["context"]))
    parts = [f"b={big['batch']} ctx={big['context']}: eager {_ms(big.get('eager_ms'))}"]
    if graph_note:
        parts.append(f"graphs skipped: {graph_note}")
    else:
        one = min(rows, key=lambda r: (r["batch"], r["context"]))
        parts.append(f"graph {_ms(big.get('graph_ms'))}")
        parts.append(f"b=1 ctx={one['context']}: eager {_ms(one.get('eager_ms'))} graph {_ms(one.get('graph_ms'))}")
    parts.append(f"roofline {_ms(big['roofline_ms'])}")
    if check:
        parts.append(f"graph-eager max diff {check['max_abs_diff']:.2g}")
    return "; ".join(parts)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"


if __name__ == "__main__":
    sys.exit(run_part("c", run))
