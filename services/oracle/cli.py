"""`internvl-serve oracle`: answer one chat with Hugging Face transformers (the reference the services match)."""

from __future__ import annotations

import argparse
import json


def add_oracle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "oracle",
        help="answer a chat with transformers on a checkpoint (the correctness reference)",
        description="Run the model card's one-image chat (or your own) through transformers. With no --model "
        "it builds and uses a tiny random checkpoint, which answers with random text.",
    )
    p.add_argument("prompt", nargs="?", default="Please describe the image explicitly.")
    p.add_argument("--model", help="checkpoint directory or hub id (default: the embedded tiny checkpoint)")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from internvl_serve.checkpoint import open_checkpoint
    from internvl_serve.oracle import Oracle
    from internvl_serve.tiny_model.default import default_model_dir

    model_dir = open_checkpoint(args.model).path if args.model else default_model_dir()
    parts: list[dict] = [{"type": "image", "image": p} for p in args.image]
    parts += [{"type": "video", "video": p} for p in args.video]
    synthetic = not parts and not args.model
    if synthetic:
        from internvl_serve.oracle.sample import sample_image

        parts.append({"type": "image", "image": sample_image()})  # offline stand-in for the card's photo
    chat = [{"role": "user", "content": [*parts, {"type": "text", "text": args.prompt}]}]
    oracle = Oracle(model_dir)
    inputs = oracle.prepare(chat)
    tokens = oracle.generate(chat, max_new_tokens=args.max_new_tokens)[0]
    result = {
        "model": str(model_dir),
        "input_tokens": len(inputs.prompt_ids(0)),
        "tiles": 0 if inputs.pixel_values is None else int(inputs.pixel_values.shape[0]),
        "token_ids": tokens,
        "text": oracle.decode(tokens),
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"model: {result['model']}")
    if not args.model:
        print("note: the embedded tiny checkpoint has random weights, so it answers with random text")
    if synthetic:
        print("note: no --image given; a generated 640x480 picture stands in for the model card's photo")
    print(f"prompt: {args.prompt!r} ({result['input_tokens']} tokens, {result['tiles']} image tiles)")
    print(f"answer ({len(tokens)} tokens): {result['text']!r}")
    return 0
