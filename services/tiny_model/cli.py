"""`internvl-serve make-tiny-model DIR --preset ... --seed N`."""

from __future__ import annotations

import argparse

from internvl_serve.checkpoint.layout import KEY_LAYOUTS
from internvl_serve.tiny_model.presets import PRESETS


def add_make_tiny_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-tiny-model",
        help="write a random-weight InternVL3 checkpoint in the -hf on-disk format",
        description="Write a random-weight InternVL3 checkpoint (answers are random text) in the exact "
        "on-disk format of the OpenGVLab -hf releases.",
    )
    p.add_argument("dir", help="output directory (created if missing)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seed", type=int, default=0, help="same preset and seed give the same bytes")
    p.add_argument(
        "--weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write weights (default: yes for tiny/bench, no for the real-shape presets)",
    )
    p.add_argument("--key-layout", choices=KEY_LAYOUTS, default="hub", help="safetensors key names")
    p.add_argument("--device", default="cpu", help="where to draw the random weights (cuda for big presets)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from internvl_serve.tiny_model.writer import make_tiny_model

    out = make_tiny_model(
        args.dir, args.preset, seed=args.seed, weights=args.weights, layout=args.key_layout, device=args.device
    )
    print(f"wrote {args.preset} checkpoint to {out}")
    return 0
