"""GPUs per decoder and KV cache left, for the released InternVL3 sizes on H100 80 GB and H200 141 GB:
computed from the models' shapes (quant_memory.py's SIZES, plus InternVL3-2B), nothing is loaded.

    python benchmarks/sizing_table.py     # bench_out/sizing.json, docs/benchmarks.md ("sizing"), docs/deploy.md

What is counted, as the services place it:

- The decoder holds the language model and lm_head only (the vision tower and projector run in the
  encoders, each replica on a GPU of its own, data-parallel: they are not split).
- Tensor parallelism as the decoder splits it (services/decoder/engine/tensor_parallel.py, imported here):
  attention heads and the MLP's intermediate dimension divided by N, K/V heads too while there are at least N
  of them (with fewer, each rank keeps one), embeddings, norms and lm_head replicated on every rank. A size
  that does not divide the heads is refused by the decoder and skipped here.
- Weights in bf16 (2 bytes each), every parameter of transformers' InternVLForConditionalGeneration built on
  the meta device (as quant_memory.py does).
- KV cache per token and GPU: 2 (K and V) x layers x K/V heads on the rank x head_dim x 2 bytes.
- Memory for the KV cache on each GPU: the decoder's own rule (decoder/engine/kv_cache.py) with its defaults,
  --gpu-memory-fraction (0.90) of the card, minus the weights, the CUDA context (assumed 0.5 GiB), the
  decoder's fixed activation headroom (1 GiB; a one-GPU decoder measures its peak instead) and the CUDA-graph
  margin (256 MiB); the other 10% stays free for NCCL buffers, CUDA graphs and the
  allocator. Card sizes as CUDA reports them: H100 80 GB 81,559 MiB, H200 141 GB 143,771 MiB.
- "TP needed": the smallest tensor-parallel size that leaves KV cache for at least one sequence of the
  model's full context (max_position_embeddings, 32,768 tokens).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quant_memory import SIZES, meta_model
from report import ROOT, table, write_json, write_section

from internvl_serve.tiny_model.presets import PRESETS, TextShape

MiB, GiB = 2**20, 2**30
BF16 = 2
GPUS = {"H100 80 GB": 81_559 * MiB, "H200 141 GB": 143_771 * MiB}
CUDA_CONTEXT_BYTES = 512 * MiB
TP_SIZES = (1, 2, 4, 8)  # GPUs of one node
# InternVL3-2B: InternViT-300M with Qwen2.5-1.5B. InternVL3-9B is InternLM3-based: not served (no row).
MODELS = {
    "InternVL3-1B": SIZES["InternVL3-1B"],
    "InternVL3-2B": (PRESETS["internvl3-1b"].vision, TextShape(1536, 28, 12, 2, 8960, 32768, 1e6)),
    **{name: shapes for name, shapes in SIZES.items() if name != "InternVL3-1B"},
}


def _is_language_model(name: str) -> bool:
    return ".language_model." in f".{name}" or name.startswith("lm_head.")


def sizing(name: str, vision, text) -> dict:
    import torch

    from internvl_serve.common.config_fields import field_default
    from internvl_serve.decoder.config import DecoderConfig
    from internvl_serve.decoder.engine.kv_cache import (
        FIXED_ACTIVATION_HEADROOM_BYTES,
        GRAPH_MARGIN_BYTES,
        KVCacheSpec,
        kv_budget_bytes,
    )
    from internvl_serve.decoder.engine.tensor_parallel import TPShard, local_heads, shard_state, tp_problems

    model, text_config = meta_model(vision, text)
    state = dict(model.named_parameters())
    language = {k: v for k, v in state.items() if _is_language_model(k)}
    others = sum(v.numel() for k, v in state.items() if k not in language)  # vision tower + projector
    head_dim = text.hidden_size // text.num_heads
    fraction = field_default(DecoderConfig, "gpu_memory_fraction")
    block = field_default(DecoderConfig, "block_size")
    row = {
        "model": name,
        "language_model_params_b": round(sum(v.numel() for v in language.values()) / 1e9, 2),
        "language_model_bf16_gib": round(BF16 * sum(v.numel() for v in language.values()) / GiB, 1),
        "encoder_bf16_gib": round(BF16 * others / GiB, 1),
        "layers": text.num_layers,
        "kv_heads": text.num_kv_heads,
        "head_dim": head_dim,
        "max_context": text.max_position_embeddings,
        "gpus": {},
    }
    for gpu, capacity in GPUS.items():
        options = []
        for size in TP_SIZES:
            if tp_problems(text_config, size):
                continue
            shard = TPShard(0, size)
            weights = BF16 * sum(t.numel() for t in shard_state(language, text_config, shard).values())
            # The decoder's own rule (kv_cache.num_kv_blocks), with weights and the CUDA context as "in use".
            spec = KVCacheSpec.for_model(
                text_config, block, torch.bfloat16, local_heads(text_config, shard).num_kv_heads
            )
            kv_per_token = spec.bytes_per_block // block
            in_use = weights + CUDA_CONTEXT_BYTES
            budget = kv_budget_bytes(capacity, fraction, in_use, FIXED_ACTIVATION_HEADROOM_BYTES, GRAPH_MARGIN_BYTES)
            tokens = max(budget, 0) // spec.bytes_per_block * block
            options.append(
                {
                    "tp": size,
                    "weights_per_gpu_gib": round(weights / GiB, 1),
                    "kv_bytes_per_token_per_gpu": kv_per_token,
                    "kv_cache_gib": round(max(budget, 0) / GiB, 1),
                    "kv_tokens": tokens,
                }
            )
        needed = next((o["tp"] for o in options if o["kv_tokens"] >= text.max_position_embeddings), None)
        row["gpus"][gpu] = {"tp_needed": needed, "options": options}
    return row


def _option(row: dict, gpu: str, tp: int | None) -> dict | None:
    return next((o for o in row["gpus"][gpu]["options"] if o["tp"] == tp), None)


def headline(rows: list[dict]) -> str:
    """One row per model: the tensor-parallel size it needs on each GPU, its weights and KV tokens there."""
    headers = ["model", "LM params (B)", "LM bf16 (GiB)", "encoder bf16 (GiB)"]
    for gpu in GPUS:
        headers += [f"{gpu}: TP", "weights/GPU (GiB)", "KV tokens"]
    lines = []
    for r in rows:
        cells = [r["model"], r["language_model_params_b"], r["language_model_bf16_gib"], r["encoder_bf16_gib"]]
        for gpu in GPUS:
            option = _option(r, gpu, r["gpus"][gpu]["tp_needed"])
            cells += (
                ["—", "—", "—"]
                if option is None
                else [option["tp"], option["weights_per_gpu_gib"], f"{option['kv_tokens']:,}"]
            )
        lines.append(cells)
    return table(headers, lines)


def markdown(rows: list[dict]) -> str:
    gpus = list(GPUS)
    every = []
    for r in rows:
        for gpu in gpus:
            cells = [r["model"], gpu]
            for tp in TP_SIZES:
                option = _option(r, gpu, tp)
                if option is None:
                    cells.append("refused")  # the heads do not divide
                elif option["kv_tokens"] == 0:
                    cells.append("does not fit")
                else:
                    cells.append(f"{option['kv_tokens']:,}")
            every.append(cells)
    per_token = [
        [
            r["model"],
            r["layers"],
            r["kv_heads"],
            r["head_dim"],
            f"{2 * r['layers'] * r['kv_heads'] * r['head_dim'] * BF16 // 1024} KiB",
        ]
        for r in rows
    ]
    return "\n".join(
        [
            "## Sizing: GPUs per decoder and KV cache left (`benchmarks/sizing_table.py`)",
            "",
            "Computed, not measured: bf16 weights from the released shapes; the decoder holds the language model "
            "and lm_head (split over TP GPUs as `--tensor-parallel-size` splits it: heads and MLP divided, "
            "embeddings and lm_head replicated), each encoder replica holds the vision tower and projector on a "
            "GPU of its own. KV cache per GPU = 90% of the card (`--gpu-memory-fraction` 0.90) minus the weights, "
            "0.5 GiB of CUDA context and the decoder's 1 GiB activation headroom; the other 10% is left for NCCL, "
            "CUDA graphs and the allocator. TP = the fewest GPUs that leave room for one full 32,768-token "
            'context. "KV tokens" is what one decoder replica holds (every GPU of it keeps its heads\' share of '
            "the same tokens), over all its running sequences. InternVL3-9B (InternLM3) is not served.",
            "",
            headline(rows),
            "",
            'KV tokens per decoder replica for every tensor-parallel size ("refused": the attention heads do '
            "not divide by it, the decoder refuses it at start):",
            "",
            table(["model", "GPU", *[f"TP {tp}" for tp in TP_SIZES]], every),
            "",
            "KV bytes per token (whole model, bf16; per GPU divide by TP while TP <= K/V heads):",
            "",
            table(["model", "layers", "K/V heads", "head_dim", "K+V per token"], per_token),
        ]
    )


def write_deploy_table(rows: list[dict]) -> None:
    """The headline table in docs/deploy.md too (its "Sizing" part, between the sizing-table markers)."""
    doc = ROOT / "docs" / "deploy.md"
    begin, end = "<!-- BEGIN sizing-table -->", "<!-- END sizing-table -->"
    text = doc.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{doc}: no {begin} ... {end} markers to write the table between")
    block = f"{begin}\n{headline(rows)}\n{end}"
    doc.write_text(text[: text.index(begin)] + block + text[text.index(end) + len(end) :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--no-docs", action="store_true", help="print the section, leave the docs alone")
    args = parser.parse_args()
    rows = [sizing(name, *shapes) for name, shapes in MODELS.items()]
    write_json(args.out, "sizing", {"gpus_bytes": GPUS, "models": rows})
    text = markdown(rows)
    if not args.no_docs:
        write_section("sizing", text)
        write_deploy_table(rows)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
