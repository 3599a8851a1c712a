"""Serving benchmark (modelled on vLLM's benchmark_serving): our gRPC stack against vLLM's CPU build (its
OpenAI server) and transformers behind a static-batching loop, on the same checkpoint, cores and requests,
in the same run. Ours is also driven through its own OpenAI-compatible API (--http-port) by the very client
that drives vLLM, all at once, so the two servers are compared through one protocol too.

Workload (serving_workload.py): image chats over a pool of repeating images, second turns about an earlier
image, text-only chats; outputs of 16-256 tokens with ignore_eos. Scenarios: all requests at once, then
Poisson arrivals at each --rates value; each scenario has its own image pool (cold media caches). Then the
all-at-once scenario again with prefix caching off on both servers, to show where the gain comes from.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/serving_bench.py [--model DIR] [--requests 24]
        [--rates 0.5,1] [--systems ours,vllm,transformers]

Prints one table, writes bench_out/serving.json and the "serving" section of docs/benchmarks.md. vLLM is
installed into its own venv on first use (benchmarks/vllm_cpu.py).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import grpc
import vllm_cpu
from report import table, write_json, write_section
from serving_systems import grpc_sender, openai_sender, run_open_loop, run_static_batching
from serving_workload import make_images, make_requests, png_bytes, summarise

from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc
from internvl_serve.stack.local_stack import split_cores
from internvl_serve.stack.ports import any_free_port
from internvl_serve.stack.processes import RedisProcess, ServiceProcess

ALL_AT_ONCE = math.inf


def scenario_name(rate: float) -> str:
    return "all at once" if rate == ALL_AT_ONCE else f"{rate:g} req/s"


def scenarios(args) -> list[tuple[str, float, int]]:
    """(name, rate, seed): all at once first, then each rate; a seed per scenario (its own images)."""
    rates = [ALL_AT_ONCE, *args.rates]
    return [(scenario_name(r), r, args.seed + i) for i, r in enumerate(rates)]


def workload(args, rate: float, seed: int):
    pngs = [png_bytes(im) for im in make_images(seed)]
    return make_requests(args.requests, rate, seed), pngs


def run_ours(
    args, model: str, work: Path, prefix_caching: bool, only_all_at_once: bool, via_http: bool = False
) -> dict[str, dict]:
    encoder_threads, decoder_threads = args.encoder_threads, args.decoder_threads
    redis = RedisProcess()
    encoder = ServiceProcess(
        "encoder",
        ["--model", model, "--redis-url", redis.url, "--num-threads", str(encoder_threads)],
        log_path=work / "encoder.log",
    )
    decoder_args = ["--model", model, "--encoder", encoder.address, "--num-threads", str(decoder_threads)]
    decoder_args += ["--max-num-seqs", str(args.requests)] + ([] if prefix_caching else ["--no-prefix-caching"])
    http_port = any_free_port("127.0.0.1")
    decoder_args += ["--http-port", str(http_port)] if via_http else []
    decoder = ServiceProcess("decoder", decoder_args, log_path=work / "decoder.log")
    results = {}
    try:
        encoder.wait_healthy()
        decoder.wait_healthy()
        with grpc.insecure_channel(decoder.address) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            for name, rate, seed in scenarios(args)[: 1 if only_all_at_once else None]:
                requests, pngs = workload(args, rate, seed)
                send = grpc_sender(stub, pngs)
                if via_http:
                    send = openai_sender(f"http://127.0.0.1:{http_port}", Path(model).name, pngs)
                results[name] = summarise(run_open_loop(requests, send))
                label = " (OpenAI HTTP)" if via_http else "" if prefix_caching else " (no prefix caching)"
                print(f"  ours{label} {name}: {_brief(results[name])}")
    finally:
        decoder.stop()
        encoder.stop()
        redis.stop()
    return results


def run_vllm(args, model: str, work: Path, prefix_caching: bool, only_all_at_once: bool) -> dict[str, dict]:
    server = vllm_cpu.VllmServer(
        model, any_free_port("127.0.0.1"), f"0-{os.cpu_count() - 1}", work / "vllm.log", prefix_caching=prefix_caching
    )
    results = {}
    try:
        server.wait_ready()
        for name, rate, seed in scenarios(args)[: 1 if only_all_at_once else None]:
            requests, pngs = workload(args, rate, seed)
            results[name] = summarise(run_open_loop(requests, openai_sender(server.url, "bench", pngs)))
            print(f"  vllm{'' if prefix_caching else ' (no prefix caching)'} {name}: {_brief(results[name])}")
    finally:
        server.stop()
    return results


def run_transformers(args, model: str) -> dict[str, dict]:
    from internvl_serve.oracle import Oracle

    oracle = Oracle(model)
    results = {}
    for name, rate, seed in scenarios(args):
        requests, _ = workload(args, rate, seed)
        images = make_images(seed)
        results[name] = summarise(run_static_batching(oracle, requests, images, max_batch=args.hf_batch))
        print(f"  transformers {name}: {_brief(results[name])}")
    return results


def _brief(s: dict) -> str:
    return (
        f"{s['output_tokens_per_s']:.1f} tok/s, TTFT p50 {s['ttft_p50_s']:.2f} s, "
        f"latency p50 {s['latency_p50_s']:.2f} s, failed {s['failed']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint (default: build the bench preset)")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rates", default="0.5,1", help="Poisson arrival rates (requests/s), comma-separated")
    parser.add_argument("--systems", default="ours,vllm,transformers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-batch", type=int, default=8, help="transformers' static batch size")
    encoder_threads, decoder_threads = split_cores(os.cpu_count() or 1)
    parser.add_argument("--encoder-threads", type=int, default=encoder_threads)
    parser.add_argument("--decoder-threads", type=int, default=decoder_threads)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md (smoke runs)")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    systems = [s.strip() for s in args.systems.split(",")]
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    model = args.model
    if model is None:
        from internvl_serve.tiny_model.writer import make_tiny_model

        model = str(make_tiny_model(work / "bench", "bench", seed=0))
    runs: dict[str, dict[str, dict]] = {}
    started = time.time()
    if "ours" in systems:
        runs["internvl-serve (gRPC)"] = run_ours(args, model, work, True, False)
        runs["internvl-serve, prefix caching off"] = run_ours(args, model, work, False, True)
        runs["internvl-serve (OpenAI HTTP)"] = run_ours(args, model, work, True, True, via_http=True)
    if "vllm" in systems:
        runs[f"vLLM {vllm_cpu.VERSION} CPU (OpenAI server)"] = run_vllm(args, model, work, True, False)
        runs["vLLM, prefix caching off"] = run_vllm(args, model, work, False, True)
    if "transformers" in systems:
        runs["transformers, static batching"] = run_transformers(args, model)
    write_json(args.out, "serving", {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs})
    if not args.no_docs:
        write_section("serving", _markdown(args, runs, time.time() - started))
    print(_markdown(args, runs, time.time() - started))
    return 0


def _markdown(args, runs: dict[str, dict[str, dict]], elapsed_s: float) -> str:
    rows = []
    for system, by_scenario in runs.items():
        for name, s in by_scenario.items():
            rows.append(
                [
                    system,
                    name,
                    f"{s['output_tokens_per_s']:.1f}",
                    f"{s['ttft_p50_s']:.2f} / {s['ttft_p90_s']:.2f}",
                    f"{s['tpot_p50_s'] * 1000:.0f} / {s['tpot_p90_s'] * 1000:.0f}",
                    f"{s['itl_p50_s'] * 1000:.0f} / {s['itl_p90_s'] * 1000:.0f}",
                    f"{s['latency_p50_s']:.2f} / {s['latency_p90_s']:.2f}",
                    str(s["failed"]),
                ]
            )
    head = ["system", "arrivals", "output tok/s", "TTFT p50/p90 s", "TPOT p50/p90 ms", "ITL p50/p90 ms"]
    head += ["latency p50/p90 s", "failed"]
    ratio = _ratio(runs)
    return "\n\n".join(
        [
            f"## Serving (`benchmarks/serving_bench.py`, bench preset, {args.requests} requests per scenario)",
            "Image chats over repeating images, second turns about an earlier image and text-only chats; outputs "
            "of 16-256 tokens with ignore_eos (every system makes the same tokens). Same checkpoint (fp32), same "
            f"cores; ours with {args.encoder_threads} encoder / {args.decoder_threads} decoder torch threads.",
            table(head, rows),
            ratio,
            f"Whole run: {elapsed_s / 60:.1f} min.",
        ]
    )


def _ratio(runs) -> str:
    ours = runs.get("internvl-serve (gRPC)", {}).get("all at once")
    vllm = next((v.get("all at once") for k, v in runs.items() if k.startswith("vLLM ") and "off" not in k), None)
    if not ours or not vllm:
        return ""
    return (
        f"All at once, ours / vLLM: **{ours['output_tokens_per_s'] / vllm['output_tokens_per_s']:.2f}x** the output "
        f"tokens/s, TTFT p50 {ours['ttft_p50_s']:.2f} s vs {vllm['ttft_p50_s']:.2f} s."
    )


if __name__ == "__main__":
    raise SystemExit(main())
