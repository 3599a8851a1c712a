"""The main job behind `scripts/run.sh`: `internvl-serve up`, then the model card's one-image chat through
`internvl-client generate`, then keep serving until Ctrl-C (or, with --demo-only, stop after the answer).

    python -m internvl_serve.stack.demo [--model DIR_OR_HUB_ID] [--image PATH]... [--video PATH]... [PROMPT]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from internvl_serve.stack.processes import REDIS_INSTALL_HINT, own_group_options
from internvl_serve.stack.up import client_command

CARD_PROMPT = "Please describe the image explicitly."  # the model card's one-image chat


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/run.sh",
        description="Start the whole stack (internvl-serve up), answer the model card's one-image chat through "
        "internvl-client, and keep serving until Ctrl-C. With no --model the tiny random checkpoint answers "
        "(random text); with no --image/--video a generated picture stands in for the card's photo.",
    )
    p.add_argument("prompt", nargs="?", default=CARD_PROMPT, metavar="PROMPT")
    p.add_argument("--model", help="checkpoint directory or hub id (-hf format); default: the tiny checkpoint")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="image file (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="PATH", help="video file (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="length of the answer (default 32)")
    p.add_argument("--demo-only", action="store_true", help="stop the stack after the answer (tests, CI)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument(
        "--ready-timeout-s",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="give up when the stack is not ready after this long (default 900)",
    )
    up = p.add_argument_group("passed to internvl-serve up (see `internvl-serve up --help`)")
    for flag, metavar in (
        ("--host", "HOST"),
        ("--port", "N"),
        ("--encoder-port", "N"),
        ("--redis-port", "N"),
        ("--device", "DEVICE"),
        ("--dtype", "DTYPE"),
        ("--log-dir", "DIR"),
    ):
        up.add_argument(flag, default=None, metavar=metavar)
    up.add_argument("--no-redis", action="store_true", help="run without redis-server (no embedding cache)")
    return p


def up_command(args: argparse.Namespace, ready_file: Path) -> list[str]:
    exe = Path(sys.executable).with_name("internvl-serve")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "internvl_serve.cli"]
    argv += ["up", "--ready-file", str(ready_file)]
    for flag in ("model", "host", "port", "encoder_port", "redis_port", "device", "dtype", "log_dir"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    if args.no_redis:
        argv.append("--no-redis")
    return argv


class _Forwarder:
    """`up` runs in its own session, so a terminal's Ctrl-C reaches only us; we pass each signal on (up: the
    first is a clean stop, a second kills what is left)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.received = False
        self.sent = 0
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, _signum, _frame) -> None:
        self.received = True
        self._send()

    def stop_up(self) -> None:
        """A clean stop of up, unless one was asked for already."""
        if not self.sent:
            self._send()

    def _send(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.sent += 1
            self.proc.send_signal(signal.SIGINT)


def _wait_ready(proc: subprocess.Popen, ready_file: Path, forwarder: _Forwarder, timeout_s: float) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not forwarder.received:
        if ready_file.is_file():
            return json.loads(ready_file.read_text())
        time.sleep(0.2)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.no_redis and shutil.which("redis-server") is None:
        print(
            f"run: redis-server is not on PATH ({REDIS_INSTALL_HINT}); running without the embedding cache",
            file=sys.stderr,
        )
        args.no_redis = True
    forwarder = _Forwarder()
    with tempfile.TemporaryDirectory(prefix="internvl-run-") as tmp:
        ready_file = Path(tmp) / "ready.json"
        forwarder.proc = proc = subprocess.Popen(up_command(args, ready_file), **own_group_options(True))
        info = _wait_ready(proc, ready_file, forwarder, args.ready_timeout_s)
        if info is None:  # up failed, was interrupted, or timed out while starting
            timed_out = proc.poll() is None and not forwarder.received
            if timed_out:
                print(f"run: the stack was not ready after {args.ready_timeout_s:g} s; stopping it", file=sys.stderr)
            forwarder.stop_up()
            code = proc.wait()
            return 130 if forwarder.received else (1 if timed_out or code == 0 else code)
        answer_code = _ask(args, info, Path(tmp))
        if args.demo_only or forwarder.received:
            forwarder.stop_up()
        else:
            print(f"\nThe stack keeps serving at {info['decoder']}. Press Ctrl-C to stop it.", flush=True)
        up_code = proc.wait()
    return answer_code or up_code


def _ask(args: argparse.Namespace, info: dict, tmp: Path) -> int:
    """The one-image chat through `internvl-client generate`, exactly as a person would type it."""
    media = [a for path in args.image for a in ("--image", path)] + [
        a for path in args.video for a in ("--video", path)
    ]
    if not media:
        from internvl_serve.oracle.sample import sample_image

        picture = tmp / "sample.png"
        sample_image().save(picture)
        media = ["--image", str(picture)]
        print("\nrun: no --image given; a generated 640x480 picture stands in for the model card's photo")
    command = [
        client_command(),
        "generate",
        "--target",
        info["decoder"],
        *media,
        "--max-new-tokens",
        str(args.max_new_tokens),
        *(["--stream"] if args.stream else []),
        args.prompt,
    ]
    print(f"run: {shlex.join(command)}", flush=True)
    if info.get("tiny_model"):
        print("run: (the tiny checkpoint has random weights: expect random text)", flush=True)
    exe = shutil.which(command[0]) or str(Path(sys.executable).with_name("internvl-client"))
    code = subprocess.run([exe, *command[1:]]).returncode
    if code != 0:
        print(f"run: internvl-client exited with code {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
