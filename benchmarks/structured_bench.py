"""Structured output: what a JSON schema costs, ours against vLLM's CPU build, through the same OpenAI client.

Both servers get the same text chats, sent all at once, greedy, first unconstrained (ignore_eos, a fixed
number of tokens) and then with `response_format: json_schema` (a bounded schema, so even random weights
finish the document). Reported: output tokens/s, latency p50, and how many constrained replies parse and
validate against the schema (jsonschema). Ours is the decoder alone (text only) with --http-port.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/structured_bench.py [--model DIR] [--requests 16]
        [--systems ours,vllm]

Writes bench_out/structured.json and the "structured" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import vllm_cpu
from report import table, write_json, write_section

from internvl_serve.stack.ports import any_free_port
from internvl_serve.stack.processes import ServiceProcess

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "ok"],
    "additionalProperties": False,
}
PLAIN_TOKENS = 64


def _body(i: int, constrained: bool) -> dict:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": f"Describe person number {i} as JSON."}],
        "temperature": 0,
        "max_tokens": 256 if constrained else PLAIN_TOKENS,
    }
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    else:
        body["ignore_eos"] = True
    return body


def _post(base_url: str, body: dict) -> tuple[float, dict]:
    where = urlsplit(base_url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=900)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = json.loads(reply.read())
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {str(data)[:300]}")
        return time.perf_counter() - started, data
    finally:
        conn.close()


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def run_load(base_url: str, requests: int, constrained: bool) -> dict:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        results = list(pool.map(lambda i: _post(base_url, _body(i, constrained)), range(requests)))
    wall = time.perf_counter() - started
    tokens = sum(r["usage"]["completion_tokens"] for _, r in results)
    texts = [r["choices"][0]["message"]["content"] for _, r in results]
    return {
        "output_tokens_per_s": tokens / wall,
        "latency_p50_s": statistics.median(t for t, _ in results),
        "output_tokens": tokens,
        "valid": sum(_valid(t) for t in texts) if constrained else None,
        "requests": requests,
    }


def measure(name: str, base_url: str, requests: int) -> dict:
    _post(base_url, _body(0, True))  # warm: the first grammar compile and the first step
    out = {"plain": run_load(base_url, requests, False), "json_schema": run_load(base_url, requests, True)}
    print(f"  {name}: {out}", flush=True)
    return out


def run_ours(model: str, requests: int, work: Path) -> dict:
    port = any_free_port("127.0.0.1")
    args = ["--model", model, "--http-port", str(port), "--max-num-seqs", str(requests)]
    decoder = ServiceProcess("decoder", args, log_path=work / "decoder.log")
    try:
        decoder.wait_healthy()
        return measure("ours", f"http://127.0.0.1:{port}", requests)
    finally:
        decoder.stop()


def run_vllm(model: str, requests: int, work: Path) -> dict:
    server = vllm_cpu.VllmServer(model, any_free_port("127.0.0.1"), f"0-{os.cpu_count() - 1}", work / "vllm.log")
    try:
        server.wait_ready()
        return measure("vllm", server.url, requests)
    finally:
        server.stop()


def _markdown(requests: int, runs: dict[str, dict]) -> str:
    rows = []
    for system, by_kind in runs.items():
        for kind, s in by_kind.items():
            valid = "" if s["valid"] is None else f"{s['valid']} / {s['requests']}"
            rows.append([system, kind, f"{s['output_tokens_per_s']:.1f}", f"{s['latency_p50_s']:.2f}", valid])
    lines = [
        f"## Structured output (`benchmarks/structured_bench.py`, bench preset, {requests} text chats at once)",
        "Greedy; plain = 64 tokens with ignore_eos, json_schema = a bounded schema via response_format, "
        "the same OpenAI client against both servers.",
        table(["system", "constraint", "output tok/s", "latency p50 s", "replies that validate"], rows),
    ]
    for system, by_kind in runs.items():
        ratio = by_kind["json_schema"]["output_tokens_per_s"] / by_kind["plain"]["output_tokens_per_s"]
        lines.append(f"{system}: constrained decoding runs at **{ratio:.2f}x** its unconstrained tokens/s.")
    return "\n\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint (default: build the bench preset)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--systems", default="ours,vllm")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="structured-bench-"))
    model = args.model
    if model is None:
        from internvl_serve.tiny_model.writer import make_tiny_model

        model = str(make_tiny_model(work / "bench", "bench", seed=0))
    systems = [s.strip() for s in args.systems.split(",")]
    runs = {}
    if "ours" in systems:
        runs["internvl-serve (OpenAI HTTP)"] = run_ours(model, args.requests, work)
    if "vllm" in systems:
        runs[f"vLLM {vllm_cpu.VERSION} CPU"] = run_vllm(model, args.requests, work)
    write_json(args.out, "structured", {"requests": args.requests, "runs": runs})
    markdown = _markdown(args.requests, runs)
    if not args.no_docs:
        write_section("structured", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
