"""`internvl-serve` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvl-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from internvl_serve.decoder.cli import add_decoder
    from internvl_serve.encoder.cli import add_encoder
    from internvl_serve.oracle.cli import add_oracle
    from internvl_serve.stack.healthcheck import add_healthcheck
    from internvl_serve.stack.up import add_up
    from internvl_serve.tiny_model.cli import add_make_tiny_model

    add_make_tiny_model(sub)
    add_encoder(sub)
    add_decoder(sub)
    add_oracle(sub)
    add_up(sub)
    add_healthcheck(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["healthcheck"]:  # containers run it every few seconds: skip the parser's torch import
        from internvl_serve.stack.healthcheck import main as healthcheck

        return healthcheck(argv[1:])
    args = build_parser().parse_args(argv)
    from internvl_serve.checkpoint import CheckpointError

    try:
        return int(args.run(args) or 0)
    except CheckpointError as exc:  # a person can act on these: no traceback
        print(f"internvl-serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
