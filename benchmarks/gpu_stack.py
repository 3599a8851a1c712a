"""Part f of the device check: the stack end to end on the GPU. Encoder and decoder as their own processes
(`internvl-serve encoder|decoder --device cuda`, Redis only when a redis-server binary is on PATH) on the
bench preset made here, the serving benchmark's workload (benchmarks/serving_workload.py: image chats,
second turns, text chats, 16-256 output tokens with ignore_eos) at a small size, all requests at once
over gRPC; then transformers' generate on the same GPU behind serving_systems' static-batching loop (batches
of 8), same requests, same dtype. Output tokens/s, TTFT, and the ratio.

    python benchmarks/gpu_stack.py --out f.json [--cpu-smoke]

--cpu-smoke: the tiny preset on the CPU, 3 requests of 4 tokens (checks the harness).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
from pathlib import Path

from gpu_part import PartContext, PartResult, markdown_table, run_part

REQUESTS, SMOKE_REQUESTS, SMOKE_TOKENS = 16, 3, 4
HF_BATCH = 8
START_TIMEOUT_S = 240


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def decoder_flags(cuda: bool) -> list[str]:
    """CUDA graphs on, on a GPU (part b checks them against transformers first)."""
    return ["--cuda-graphs", "on"] if cuda else []


def workload(smoke: bool):
    from serving_workload import make_images, make_requests, png_bytes

    requests = make_requests(SMOKE_REQUESTS if smoke else REQUESTS, math.inf, seed=0)
    if smoke:
        requests = [dataclasses.replace(r, max_tokens=SMOKE_TOKENS) for r in requests]
    images = make_images(0)
    return requests, images, [png_bytes(im) for im in images]


def run_ours(ctx: PartContext, model: str, requests, pngs) -> tuple[dict, dict]:
    import grpc
    from serving_systems import grpc_sender, run_open_loop
    from serving_workload import summarise

    from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc
    from internvl_serve.stack.processes import RedisProcess, ServiceProcess

    redis = RedisProcess() if shutil.which("redis-server") else None
    common = ["--model", model, "--device", ctx.device]
    extra = ["--redis-url", redis.url] if redis else []
    logs = {name: ctx.work / f"{name}.log" for name in ("encoder", "decoder")}
    encoder = ServiceProcess("encoder", [*common, *extra], log_path=logs["encoder"])
    decoder = None
    try:
        decoder_args = [*common, *extra, "--encoder", encoder.address, "--max-num-seqs", str(len(requests))]
        decoder = ServiceProcess("decoder", decoder_args + decoder_flags(ctx.cuda), log_path=logs["decoder"])
        for name, service in (("encoder", encoder), ("decoder", decoder)):
            try:
                service.wait_healthy(START_TIMEOUT_S)
            except Exception as exc:
                raise RuntimeError(f"the {name} did not start: {exc}\n{_log_tail(logs[name])}") from exc
        with grpc.insecure_channel(decoder.address) as channel:
            outcomes = run_open_loop(requests, grpc_sender(pb_grpc.GenerationServiceStub(channel), pngs))
    finally:
        for service in (decoder, encoder):
            if service is not None:
                service.stop()
        if redis is not None:
            redis.stop()
    errors = [o.error for o in outcomes if o.error]
    if len(errors) == len(outcomes):
        raise RuntimeError(f"every request failed; the first: {errors[0]}\n{_log_tail(logs['decoder'])}")
    setup = {"redis": bool(redis), "decoder_flags": decoder_flags(ctx.cuda), "first_error": errors[0] if errors else ""}
    return summarise(outcomes), setup


def run_transformers(ctx: PartContext, model: str, requests, images) -> dict:
    import torch
    from serving_systems import run_static_batching
    from serving_workload import summarise

    from internvl_serve.oracle import Oracle

    oracle = Oracle(model, dtype=torch.bfloat16 if ctx.cuda else torch.float32, device=ctx.device)
    oracle.generate([{"role": "user", "content": [{"type": "text", "text": "Hello"}]}], max_new_tokens=2)  # warm-up
    return summarise(run_static_batching(oracle, requests, images, max_batch=HF_BATCH))


def run(ctx: PartContext) -> PartResult:
    from internvl_serve.tiny_model.writer import make_tiny_model

    preset = "tiny" if ctx.smoke else "bench"
    model = str(make_tiny_model(ctx.work / preset, preset, seed=0))
    requests, images, pngs = workload(ctx.smoke)
    ours, setup = run_ours(ctx, model, requests, pngs)
    print(f"ours: {_brief(ours)}")
    theirs = run_transformers(ctx, model, requests, images)
    print(f"transformers: {_brief(theirs)}")
    ratio = ours["output_tokens_per_s"] / theirs["output_tokens_per_s"]
    rows = [["internvl-serve (gRPC, 2 processes)", ours], [f"transformers, static batches of {HF_BATCH}", theirs]]
    print(
        "\n"
        + markdown_table(
            ["system", "output tok/s", "TTFT p50 s", "TTFT p90 s", "TPOT p50 ms", "latency p90 s", "failed"],
            [
                [name, s["output_tokens_per_s"], s["ttft_p50_s"], s["ttft_p90_s"], s["tpot_p50_s"] * 1e3]
                + [s["latency_p90_s"], s["failed"]]
                for name, s in rows
            ],
        )
    )
    figures = {
        "preset": preset,
        "requests": len(requests),
        "arrivals": "all at once",
        "dtype": "bfloat16" if ctx.cuda else "float32",
        "ours": ours,
        "transformers": theirs,
        "ratio_output_tokens_per_s": ratio,
        **setup,
    }
    headline = (
        f"{len(requests)} requests: ours {ours['output_tokens_per_s']:.0f} tok/s, TTFT p50 {ours['ttft_p50_s']:.2f} s; "
        f"transformers {theirs['output_tokens_per_s']:.0f} tok/s, TTFT p50 {theirs['ttft_p50_s']:.2f} s; "
        f"{ratio:.2f}x"
    )
    if ours["failed"]:
        headline += f"; {ours['failed']} failed"
    return PartResult(ours["failed"] == 0, headline, figures, setup["first_error"])


def _brief(s: dict) -> str:
    return f"{s['output_tokens_per_s']:.1f} tok/s, TTFT p50 {s['ttft_p50_s']:.2f} s, failed {s['failed']}"


if __name__ == "__main__":
    sys.exit(run_part("f", run))
