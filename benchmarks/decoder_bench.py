"""End-to-end benchmark (CPU or GPU): output tokens/s and time to first token of the gRPC stack (redis,
encoder, decoder as separate processes) under N concurrent image+text requests, against transformers'
batched generate on the same checkpoint, prompts and token counts, in the same run.

The requests are a realistic mix: images of several sizes and aspect ratios (1 to 6 tiles plus thumbnail,
so prompts differ in length) and answers of different lengths (each request asks for its own number of
tokens, with ignore_eos so both systems produce exactly that many). transformers gets them as one batch,
left-padded to the longest prompt, generating until the longest answer is done; only each request's own
tokens count as output for both systems.

    .venv/bin/python benchmarks/decoder_bench.py [--model DIR] [--requests 32] [--max-new-tokens 32]

Prints a table, writes bench_out/decoder.json and the "decoder" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from PIL import Image
from report import table, write_json, write_section

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.stack.processes import RedisProcess, ServiceProcess

PROMPTS = ["Describe this image.", "Write a haiku for this image.", "What is in the picture?", "Count the objects."]
SIZES = [(448, 448), (896, 448), (448, 1344), (896, 896), (1344, 896)]  # 1, 2+1, 3+1, 4+1, 6+1 tiles
ANSWER_LENGTHS = [16, 32, 64, 128]


def _image(seed: int, size: tuple[int, int] = (448, 448)) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _stream(stub, data: bytes, prompt: str, max_new: int) -> tuple[float, float, int]:
    """(time to first token, total time, output tokens) of one streamed request."""
    request = pb.GenerateStreamRequest(
        messages=[
            pb.Message(
                role="user",
                content=[pb.Part(media=media_pb2.Media(image=media_pb2.Image(data=data))), pb.Part(text=prompt)],
            )
        ],
        sampling=pb.SamplingParams(max_new_tokens=max_new, ignore_eos=True),
    )
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    for delta in stub.GenerateStream(request):
        if ttft is None and delta.token_ids:
            ttft = time.perf_counter() - t0
        tokens += len(delta.token_ids)
    return ttft, time.perf_counter() - t0, tokens


def run_stack(model: str, images: list[bytes], prompts: list[str], max_new: list[int], work: Path) -> dict:
    redis = RedisProcess()
    encoder = ServiceProcess("encoder", ["--model", model, "--redis-url", redis.url], log_path=work / "encoder.log")
    decoder = ServiceProcess(
        "decoder",
        ["--model", model, "--encoder", encoder.address, "--max-num-seqs", str(len(images))],
        log_path=work / "decoder.log",
    )
    try:
        encoder.wait_healthy()
        decoder.wait_healthy()
        with grpc.insecure_channel(decoder.address) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            _stream(stub, _png(_image(99_999)), "warm up", 4)
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
                rows = list(pool.map(lambda a: _stream(stub, *a), zip(images, prompts, max_new)))
            wall = time.perf_counter() - t0
    finally:
        decoder.stop()
        encoder.stop()
        redis.stop()
    tokens = sum(r[2] for r in rows)
    return {
        "output_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(r[0] for r in rows),
        "ttft_max_s": max(r[0] for r in rows),
    }


def run_transformers(model: str, images: list[Image.Image], prompts: list[str], max_new: list[int]) -> dict:
    from internvl_serve.oracle import Oracle

    oracle = Oracle(model)
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": p}]}]
        for im, p in zip(images, prompts)
    ]
    warm = oracle.prepare(chats[:1])
    oracle.model.generate(**warm.as_model_kwargs(), do_sample=False, max_new_tokens=2)
    with torch.inference_mode():
        t0 = time.perf_counter()
        inputs = oracle.prepare(chats)  # preprocessing counts, as the stack's encoder does it too
        oracle.model.generate(**inputs.as_model_kwargs(), do_sample=False, max_new_tokens=1, min_new_tokens=1)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        inputs = oracle.prepare(chats)
        longest = max(max_new)  # one batch runs until its longest answer is done
        out = oracle.model.generate(
            **inputs.as_model_kwargs(), do_sample=False, max_new_tokens=longest, min_new_tokens=longest
        )
        wall = time.perf_counter() - t0
    assert out.shape[1] - inputs.input_ids.shape[1] == longest
    tokens = sum(max_new)  # each request's own answer; the rest of its row is waste
    return {
        "output_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_s": ttft,
        "padded_prompt_len": int(inputs.input_ids.shape[1]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint (default: build the bench preset)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="decoder-bench-"))
    model = args.model
    if model is None:
        from internvl_serve.tiny_model.writer import make_tiny_model

        model = str(make_tiny_model(work / "bench", "bench", seed=0))
    pil = [_image(i, SIZES[i % len(SIZES)]) for i in range(args.requests)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    max_new = [ANSWER_LENGTHS[(i // len(SIZES)) % len(ANSWER_LENGTHS)] for i in range(args.requests)]
    ours = run_stack(model, [_png(p) for p in pil], prompts, max_new, work)
    theirs = run_transformers(model, pil, prompts, max_new)
    speedup = ours["tokens_per_s"] / theirs["tokens_per_s"]
    md = "\n\n".join(
        [
            f"## End to end (`benchmarks/decoder_bench.py`, bench preset, "
            f"{args.requests} concurrent image+text requests)",
            f"Images of {len(SIZES)} sizes (1 to 6 tiles + thumbnail), answers of {ANSWER_LENGTHS} tokens "
            f"({sum(max_new)} output tokens in all); transformers pads every prompt to {theirs['padded_prompt_len']} "
            f"tokens and runs {max(max_new)} steps for every row.",
            table(
                ["system", "output tokens/s", "time to first token", "wall (s)"],
                [
                    [
                        "internvl-serve (gRPC: decoder + encoder + Redis, streaming)",
                        f"{ours['tokens_per_s']:.1f}",
                        f"p50 {ours['ttft_p50_s']:.2f} s, max {ours['ttft_max_s']:.2f} s",
                        f"{ours['wall_s']:.1f}",
                    ],
                    [
                        "transformers `generate`, one batch of all requests",
                        f"{theirs['tokens_per_s']:.1f}",
                        f"{theirs['ttft_s']:.2f} s (whole batch)",
                        f"{theirs['wall_s']:.1f}",
                    ],
                ],
            ),
            f"Output tokens/s: **{speedup:.2f}x** transformers' batched generate (target: at least 2x on the CPU).",
        ]
    )
    print(md)
    write_json(
        args.out,
        "decoder",
        {
            "stack": ours,
            "transformers": theirs,
            "speedup": speedup,
            "requests": args.requests,
            "max_new_tokens": max_new,
        },
    )
    write_section("decoder", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
