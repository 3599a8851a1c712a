"""The 4-bit part of the device check: our encoder and decoder with --load-in-4bit (bitsandbytes' CUDA
kernels on a GPU) against transformers loaded as the model card loads it, on a tiny checkpoint made here:
greedy tokens of a text chat and an image chat, fp4 and nf4. Prints a markdown table; writes
quant_check.json to --out. Runs on the CPU too (the same code path, bitsandbytes' CPU backend), which is
how it is tested before GPU minutes are spent. Needs the project installed and bitsandbytes; says so and
exits 0 when bitsandbytes is missing, so the rest of the device check still runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MAX_NEW = 12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    args = parser.parse_args()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        print("\n4-bit check skipped: bitsandbytes is not installed on this machine")
        return 0
    import torch
    from transformers import BitsAndBytesConfig

    from internvl_serve.clients import InternVLClient
    from internvl_serve.oracle import Oracle
    from internvl_serve.stack.processes import ServiceProcess
    from internvl_serve.tiny_model.writer import make_tiny_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    work = Path(tempfile.mkdtemp(prefix="internvl-quant-check-"))
    model = str(make_tiny_model(work / "tiny", "tiny", seed=0))
    image = work / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(image)
    chats = {
        "text": [{"role": "user", "content": [{"type": "text", "text": "Write a haiku"}]}],
        "image": [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "Hi"}]}],
    }
    rows, started = [], time.monotonic()
    for quant_type in ("fp4", "nf4"):
        oracle = Oracle(
            model,
            device=device,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type),
        )
        flags = ["--model", model, "--device", device, "--dtype", "float32", "--load-in-4bit"]
        flags += ["--bnb-4bit-quant-type", quant_type]
        encoder = ServiceProcess(
            "encoder", [*flags, "--video-workers", "1"], log_path=work / f"encoder-{quant_type}.log"
        )
        try:
            encoder.wait_healthy(300)
            decoder = ServiceProcess("decoder", [*flags, "--encoder", encoder.address], log_path=work / "decoder.log")
            try:
                decoder.wait_healthy(300)
                with InternVLClient(decoder.address, timeout=120) as client:
                    for name, chat in chats.items():
                        ours = list(client.generate(chat, max_new_tokens=MAX_NEW).token_ids)
                        theirs = oracle.generate(_as_hf(chat), MAX_NEW)[0]
                        rows.append(
                            {"quant": quant_type, "chat": name, "identical": ours == theirs, "tokens": len(ours)}
                        )
            finally:
                decoder.stop()
        finally:
            encoder.stop()
    ok = all(r["identical"] for r in rows)
    print(f"\n### 4-bit (bitsandbytes) greedy tokens vs transformers on {device}\n")
    print("| quant | chat | identical | tokens |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['quant']} | {r['chat']} | {r['identical']} | {r['tokens']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "rows": rows, "ok": ok, "wall_s": round(time.monotonic() - started, 1)}
    (args.out / "quant_check.json").write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


def _as_hf(chat: list[dict]) -> list[dict]:
    """The same chat as the oracle takes it (paths as "image")."""
    parts = [{"type": "image", "image": p["path"]} if p["type"] == "image" else p for p in chat[0]["content"]]
    return [{"role": "user", "content": parts}]


if __name__ == "__main__":
    sys.exit(main())
