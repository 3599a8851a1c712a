"""Part e of the device check: the encoder's vision tower + projector (services/encoder/vision_model.py) at
the InternViT-300M shape of the internvl3-14b preset (448x448 tiles, 14x14 patches, 24 layers of 1024,
projector to Qwen2.5-14B's 5120), random bf16 weights: tiles/s at 1, 8 and 32 tiles per forward, which
is why the encoder micro-batches tiles across requests.

    python benchmarks/gpu_vision.py --out e.json [--cpu-smoke]

FLOPs per tile = patch embedding + per layer 2 * tokens * (4 h^2 + 2 h I) + attention 4 * tokens^2 * h,
+ the projector on the pixel-shuffled tokens; achieved TFLOP/s is reported against the bf16 peak.
"""

from __future__ import annotations

import sys

import torch
from gpu_part import PartContext, PartResult, attempt, init_random_, markdown_table, peak_bf16_tflops, run_part, wall_ms

BATCHES = [1, 8, 32]
SMOKE_BATCHES = [1, 2]


def preset_config(preset: str, vocab_size: int = 152064):
    """The InternVLConfig make-tiny-model writes for a preset (shapes, norms, downsampling), without
    training its tokenizer."""
    from internvl_serve.tiny_model.presets import PRESETS
    from internvl_serve.tiny_model.writer import ShapeOnlyTokenizer, build_config

    return build_config(PRESETS[preset], ShapeOnlyTokenizer(vocab_size))


def tile_flops(config) -> float:
    """FLOPs of one tile through the tower and the projector (2 per multiply-add)."""
    vc = config.vision_config
    side, patch = vc.image_size[0], vc.patch_size[0]
    patches = (side // patch) ** 2
    tokens = patches + 1  # CLS
    h, inter = vc.hidden_size, vc.intermediate_size
    embed = 2.0 * patches * vc.num_channels * patch * patch * h
    layer = 2.0 * tokens * (4 * h * h + 2 * h * inter) + 4.0 * tokens * tokens * h
    factor = int(1 / config.downsample_ratio) ** 2
    out_tokens, text_h = patches // factor, config.text_config.hidden_size
    projector = 2.0 * out_tokens * (h * factor * text_h + text_h * text_h)
    return embed + vc.num_hidden_layers * layer + projector


def build_tower(config, device: str, dtype: torch.dtype):
    """VisionTowerWithProjector as from_state builds it (meta, to_empty), with random weights."""
    from internvl_serve.encoder.vision_model import VisionTowerWithProjector

    with torch.device("meta"):
        model = VisionTowerWithProjector(config)
    model.to_empty(device=device)
    init_random_(model)
    return model.to(dtype).eval()


def run(ctx: PartContext) -> PartResult:
    config = preset_config("tiny" if ctx.smoke else "internvl3-14b")
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    model = build_tower(config, ctx.device, dtype)
    side = config.vision_config.image_size[0]
    flops = tile_flops(config)
    peak = peak_bf16_tflops(ctx.device_name) if ctx.cuda else None
    errors: list[str] = []
    rows = []
    for tiles in SMOKE_BATCHES if ctx.smoke else BATCHES:
        pixels = torch.randn(tiles, 3, side, side, device=ctx.device).to(dtype)
        ms = attempt(
            errors, f"{tiles} tiles", lambda: wall_ms(lambda: model(pixels), ctx.cuda, reps=3 if ctx.smoke else 10)
        )
        row = {"tiles": tiles, "ms": ms}
        if ms:
            row["tiles_per_s"] = tiles / ms * 1e3
            row["tflops"] = tiles * flops / ms / 1e9
            row["vs_peak"] = row["tflops"] / peak if peak else None
        rows.append(row)
    done = [r for r in rows if r.get("tiles_per_s")]
    gain = done[-1]["tiles_per_s"] / done[0]["tiles_per_s"] if len(done) > 1 else None
    print(
        "\n"
        + markdown_table(
            ["tiles per forward", "ms", "tiles/s", "TFLOP/s", "of peak"],
            [[r["tiles"], r["ms"], r.get("tiles_per_s"), r.get("tflops"), r.get("vs_peak")] for r in rows],
        )
    )
    vc = config.vision_config
    figures = {
        "shape": f"{vc.num_hidden_layers} layers x {vc.hidden_size}, {side}x{side} tiles, patch {vc.patch_size[0]}",
        "dtype": str(dtype).removeprefix("torch."),
        "gflop_per_tile": flops / 1e9,
        "peak_bf16_tflops": peak if peak else ("unknown peak" if ctx.cuda else None),
        "rows": rows,
        "batching_gain": gain,
    }
    headline = ", ".join(f"{r['tiles']} tile{'s' * (r['tiles'] > 1)}: {r['tiles_per_s']:.0f} tiles/s" for r in done)
    if gain:
        headline += f"; {done[-1]['tiles']} vs {done[0]['tiles']}: {gain:.1f}x"
    ok = not errors and len(done) == len(rows)
    return PartResult(ok, headline or "no batch ran", figures, "; ".join(errors))


if __name__ == "__main__":
    sys.exit(run_part("e", run))
