"""Part b of the device check: our decoder engine on CUDA against transformers on the same GPU, on a tiny
checkpoint made here (make_tiny_model "tiny", seed 0) and the model card's chats (text, one image,
several images, video; media made locally, embeddings from the oracle as the engine tests take them).

- fp32: greedy tokens of our Engine must equal transformers' generate, each chat alone and all four at
  once, with CUDA graphs off and (when the decoder has them) on; and each media chat once more with its
  embeddings in host memory, as the decoder service receives them from an encoder.
- bf16: our bf16 engine against transformers' bf16 model; share of identical tokens and the first
  divergence, reported, not asserted (two bf16 implementations round differently).

    python benchmarks/gpu_engine_check.py --out b.json [--cpu-smoke]
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import torch
from gpu_media import have_pyav, media_embeddings, model_card_chats
from gpu_part import PartContext, PartResult, attempt, markdown_table, run_part

MAX_NEW, SMOKE_MAX_NEW = 32, 4


def agreement(ours: list[int], theirs: list[int]) -> dict:
    """Share of positions with the same token (over the longer answer) and the first index that differs
    (None when identical; the shorter length when one answer is a prefix of the other)."""
    longest = max(len(ours), len(theirs))
    same = sum(a == b for a, b in zip(ours, theirs))
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if first is None and len(ours) != len(theirs):
        first = min(len(ours), len(theirs))
    return {"share_identical": same / longest if longest else 1.0, "first_divergence": first}


def graph_modes(cuda: bool) -> list[str]:
    """ "off", and "on" where a GPU is there to capture CUDA graphs."""
    return ["off", "on"] if cuda else ["off"]


def _config(model_dir, device, dtype, graphs: str):
    from internvl_serve.decoder.config import DecoderConfig

    return DecoderConfig(
        model=str(model_dir),
        device=device,
        dtype=dtype,
        num_kv_blocks=512,
        max_num_seqs=8,
        max_tokens_per_step=1024,
        cuda_graphs=graphs,
    )


async def _engine_tokens(runtime, config, chats, media, max_new, host_media=None):
    """Our greedy tokens per chat: each alone, then all at once (one batch); then, with `host_media`, each
    media chat again with its embeddings in host memory, as the decoder service gets them from an encoder
    (an error there is returned as the chat's result)."""
    from internvl_serve.decoder.engine import Engine, GenerationRequest, SamplingParams

    def request(name, items):
        return GenerationRequest(chats[name], items[name], SamplingParams(max_new_tokens=max_new), request_id=name)

    engine = Engine(runtime, config)
    try:
        await engine.warmup()
        alone = {name: (await engine.generate_full(request(name, media))).token_ids for name in chats}
        together = await asyncio.gather(*(engine.generate_full(request(name, media)) for name in chats))
        hosted = {}
        for name in host_media or {}:
            try:
                hosted[name] = (await engine.generate_full(request(name, host_media))).token_ids
            except Exception as exc:  # noqa: BLE001  (reported in the row)
                hosted[name] = f"{type(exc).__name__}: {exc}"[:300]
        return alone, {name: r.token_ids for name, r in zip(chats, together)}, hosted
    finally:
        await engine.close()


def _on_host(items: list) -> list:
    return [dataclasses.replace(m, embeddings=m.embeddings.cpu()) for m in items]


def compare(ctx: PartContext, model_dir, chats, dtype: str, modes: list[str], max_new: int) -> list[dict]:
    """Rows of (dtype, graphs, chat, batch) with our tokens against transformers'."""
    from internvl_serve.decoder.engine import load_model
    from internvl_serve.oracle import Oracle

    torch_dtype = getattr(torch, dtype)
    oracle = Oracle(model_dir, dtype=torch_dtype, device=ctx.device)
    expected = {name: oracle.generate(chat, max_new_tokens=max_new)[0] for name, chat in chats.items()}
    media = {name: media_embeddings(oracle, chat) for name, chat in chats.items()}
    del oracle
    runtime = load_model(_config(model_dir, ctx.device, dtype, "off"))
    host_media = {name: _on_host(items) for name, items in media.items() if items}
    rows = []
    try:
        for i, mode in enumerate(modes):
            config = _config(model_dir, ctx.device, dtype, mode)
            hosted = host_media if i == 0 else None
            alone, together, hosted = asyncio.run(_engine_tokens(runtime, config, chats, media, max_new, hosted))
            for how, ours in (("alone", alone), ("all at once", together), ("host embeddings", hosted)):
                for name in ours:
                    rows.append(_row(dtype, mode, name, how, ours[name], expected[name]))
    finally:
        del runtime
        if ctx.cuda:
            torch.cuda.empty_cache()
    return rows


def _row(dtype, mode, chat, how, ours, theirs) -> dict:
    row = {"dtype": dtype, "graphs": mode, "chat": chat, "how": how, "hf_tokens": len(theirs)}
    if isinstance(ours, str):  # the engine raised
        return row | {"identical": False, "tokens": 0, "share_identical": 0.0, "first_divergence": 0, "error": ours}
    return row | {"identical": ours == theirs, "tokens": len(ours)} | agreement(ours, theirs)


def run(ctx: PartContext) -> PartResult:
    from internvl_serve.tiny_model.writer import make_tiny_model

    max_new = SMOKE_MAX_NEW if ctx.smoke else MAX_NEW
    model_dir = make_tiny_model(ctx.work / "tiny", "tiny", seed=0)
    video = have_pyav()
    chats = model_card_chats(ctx.work / "media", with_video=video)
    notes = [] if video else ["video chat skipped: PyAV (av) is not installed"]
    modes = graph_modes(ctx.cuda)
    errors: list[str] = []
    fp32 = attempt(errors, "fp32", lambda: compare(ctx, model_dir, chats, "float32", modes, max_new)) or []
    bf16 = attempt(errors, "bf16", lambda: compare(ctx, model_dir, chats, "bfloat16", modes[-1:], max_new)) or []
    rows = fp32 + bf16
    print(
        "\n"
        + markdown_table(
            ["dtype", "graphs", "chat", "how", "identical", "tokens", "hf tokens", "share identical", "first diff"],
            [
                [r["dtype"], r["graphs"], r["chat"], r["how"], r["identical"], r["tokens"], r["hf_tokens"]]
                + [r["share_identical"], r["first_divergence"]]
                for r in rows
            ],
        )
    )
    for note in notes:
        print(note)
    for r in rows:
        if r.get("error"):
            errors.append(f"{r['dtype']} {r['chat']} ({r['how']}): {r['error']}")
    figures = {"max_new_tokens": max_new, "graph_modes": modes, "rows": rows, "notes": notes}
    headline = []
    for mode in modes:
        mine = [r for r in fp32 if r["graphs"] == mode]
        same = sum(r["identical"] for r in mine)
        headline.append(f"fp32 tokens = transformers {same}/{len(mine)} (graphs {mode})")
    if bf16:
        share = sum(r["share_identical"] for r in bf16) / len(bf16)
        firsts = [r["first_divergence"] for r in bf16 if r["first_divergence"] is not None]
        first = f"first divergence at {min(firsts)}" if firsts else "no divergence"
        headline.append(f"bf16 agreement {share:.0%} ({first})")
    headline += notes
    ok = not errors and bool(fp32) and all(r["identical"] for r in fp32)
    return PartResult(ok, "; ".join(headline), figures, "; ".join(errors))


if __name__ == "__main__":
    sys.exit(run_part("b", run))
