"""Encoder benchmark (CPU or GPU): images/s with micro-batching vs one image at a time, and the latency of
a cache hit vs a miss, over real gRPC against `internvl-serve encoder` processes on the bench preset.

    .venv/bin/python benchmarks/encoder_bench.py [--model DIR] [--images 48] [--concurrency 16]

Prints a table, writes bench_out/encoder.json and the "encoder" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from report import table, write_json, write_section

from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc
from internvl_serve.stack.processes import RedisProcess, ServiceProcess


def _png(seed: int, width: int, height: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _encode(stub, data: bytes) -> tuple[float, pb.EncodedMedia]:
    t0 = time.perf_counter()
    reply = stub.Encode(pb.EncodeRequest(media=[media_pb2.Media(image=media_pb2.Image(data=data))]))
    return time.perf_counter() - t0, reply.media[0]


def _throughput(model: str, images: list[bytes], concurrency: int, batch_args: list[str], log: Path) -> dict:
    server = ServiceProcess("encoder", ["--model", model, *batch_args], log_path=log)
    try:
        server.wait_healthy()
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.VisionEncoderServiceStub(channel)
            _encode(stub, _png(10_000, 448, 448))  # warm the connection and the kernels
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                latencies = [lat for lat, _ in pool.map(lambda d: _encode(stub, d), images)]
            wall = time.perf_counter() - t0
    finally:
        server.stop()
    return {"images_per_s": len(images) / wall, "p50_ms": 1000 * statistics.median(latencies), "wall_s": wall}


def _cache_latency(model: str, redis: RedisProcess, images: list[bytes], log: Path) -> dict:
    server = ServiceProcess("encoder", ["--model", model, "--redis-url", redis.url], log_path=log)
    try:
        server.wait_healthy()
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.VisionEncoderServiceStub(channel)
            _encode(stub, _png(20_000, 448, 448))
            miss, hit = [], []
            for data in images:
                lat, item = _encode(stub, data)
                assert not item.cache_hit
                miss.append(lat)
                lat, item = _encode(stub, data)
                assert item.cache_hit
                hit.append(lat)
    finally:
        server.stop()
    return {
        "miss_p50_ms": 1000 * statistics.median(miss),
        "hit_p50_ms": 1000 * statistics.median(hit),
        "tiles_per_image": item.num_tiles,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint (default: build the bench preset)")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="encoder-bench-"))
    model = args.model
    if model is None:
        from internvl_serve.tiny_model.writer import make_tiny_model

        model = str(make_tiny_model(work / "bench", "bench", seed=0))
    # One 448x448 tile each: batching across requests is the only batching there is.
    images = [_png(i, 448, 448) for i in range(args.images)]
    one_at_a_time = _throughput(model, images, 1, ["--max-batch-wait-ms", "0"], work / "enc1.log")
    batched = _throughput(
        model, images, args.concurrency, ["--max-batch-tiles", "16", "--max-batch-wait-ms", "5"], work / "enc2.log"
    )
    redis = RedisProcess()
    try:
        big = [_png(100 + i, 1344, 896) for i in range(8)]  # 6 tiles + thumbnail each
        cache = _cache_latency(model, redis, big, work / "enc3.log")
    finally:
        redis.stop()
    results = {
        "one_at_a_time": one_at_a_time,
        "micro_batched": batched,
        "cache": cache,
        "images": args.images,
        "concurrency": args.concurrency,
    }
    speedup = batched["images_per_s"] / one_at_a_time["images_per_s"]
    md = "\n\n".join(
        [
            "## Encoder (`benchmarks/encoder_bench.py`, bench preset, real gRPC, separate server process)",
            table(
                ["mode", "images/s", "p50 latency (ms)"],
                [
                    [
                        "one at a time (concurrency 1, no wait)",
                        f"{one_at_a_time['images_per_s']:.2f}",
                        f"{one_at_a_time['p50_ms']:.0f}",
                    ],
                    [
                        f"micro-batched (concurrency {args.concurrency}, <=16 tiles, 5 ms)",
                        f"{batched['images_per_s']:.2f}",
                        f"{batched['p50_ms']:.0f}",
                    ],
                ],
            ),
            f"Micro-batching: **{speedup:.2f}x** the images/s of one at a time "
            f"({args.images} distinct 448x448 images).",
            table(
                ["request (1344x896 image, " + str(cache["tiles_per_image"]) + " tiles)", "p50 latency (ms)"],
                [
                    ["cache miss (decode + tile + vision tower)", f"{cache['miss_p50_ms']:.1f}"],
                    ["cache hit (Redis)", f"{cache['hit_p50_ms']:.1f}"],
                ],
            ),
            f"Cache hit: **{cache['miss_p50_ms'] / cache['hit_p50_ms']:.1f}x** faster than a miss.",
        ]
    )
    print(md)
    write_json(args.out, "encoder", results)
    write_section("encoder", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
