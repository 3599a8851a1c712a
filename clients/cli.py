"""internvl-client: ask a running decoder about images, videos and text, or pre-encode media."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

EXIT_CODES = """\
exit codes:
  0  success
  1  any other error (the server's status code and message are printed)
  2  usage error or bad input: a missing file, a url without --allow-urls, INVALID_ARGUMENT from the server,
     or a missing or unknown token (UNAUTHENTICATED)
  3  the server cannot be reached or is unavailable (UNAVAILABLE)

Errors are printed on one line on stderr, without a traceback."""

_TRANSPORT_HINTS = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "socket closed",
    "connections to all backends failing",
    "connection reset",
    "name resolution",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="internvl-client",
        description="Client of the InternVL3 gRPC services.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,encode}")
    gen = sub.add_parser(
        "generate",
        help="answer a prompt about images and videos (GenerationService)",
        description="Send one user turn (the media first, then PROMPT) to the decoder and print the reply.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(gen, "decoder")
    gen.add_argument("prompt", metavar="PROMPT", help="the question or instruction ('-' reads it from stdin)")
    gen.add_argument("--image", action="append", default=[], metavar="PATH", help="image file (repeatable)")
    gen.add_argument("--video", action="append", default=[], metavar="PATH", help="video file (repeatable)")
    gen.add_argument("--system", metavar="TEXT", help="system message")
    gen.add_argument("--max-new-tokens", type=int, metavar="N", help="most tokens to generate (server default 256)")
    gen.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass, in (0, 1]")
    gen.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    gen.add_argument("--seed", type=int, metavar="N", help="seed for sampling (reproducible answers)")
    gen.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    gen.add_argument("--repetition-penalty", type=float, metavar="X", help="> 1 discourages repetition")
    gen.add_argument("--ignore-eos", action="store_true", default=None, help="generate through end-of-sequence")
    gen.add_argument("--request-id", metavar="ID", help="id recorded in the server's logs and traces")
    gen.add_argument("--stream", action="store_true", help="print the text as it is generated")
    gen.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (text, token_ids, finish_reason, usage); with --stream, "
        "one JSON object per delta line",
    )
    enc = sub.add_parser(
        "encode",
        help="encode media ahead of time and print their media ids (VisionEncoderService)",
        description="Encode each file on the encoder and print one media_id per line; a later request may "
        'refer to it as {"type": "image", "media_id": ID} instead of sending the bytes again.',
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(enc, "encoder")
    enc.add_argument("paths", nargs="+", metavar="PATH", help="image or video files (kind read from the file)")
    enc.add_argument("--json", action="store_true", help="print one JSON object per item")
    return parser


def _add_common(p: argparse.ArgumentParser, service: str) -> None:
    env_target = os.environ.get("INTERNVL_TARGET")
    p.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=env_target,
        required=env_target is None,
        help=f"address of the {service} (default: $INTERNVL_TARGET)",
    )
    p.add_argument(
        "--num-frames", type=int, default=0, metavar="N", help="frames sampled per video (0 = server default)"
    )
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="deadline of the call (default 300)")
    p.add_argument("--allow-urls", action="store_true", help="let media be http(s) urls, fetched by this client")
    p.add_argument("--tls-ca", metavar="FILE", help="PEM CA bundle that signed the server's certificate: use TLS")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--token", metavar="TOKEN", help="bearer token (default: $INTERNVL_TOKEN; flags show in `ps`)")
    p.set_defaults(service=service)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - every error becomes one line and an exit code
        message, code = describe_error(exc, args.target, args.service, args.timeout)
        print(f"internvl-client: error: {message}", file=sys.stderr)
        return code


def describe_error(exc: BaseException, target: str, service: str, timeout: float) -> tuple[str, int]:
    """One line for a person, and the exit code."""
    from internvl_serve.clients import errors

    details = " ".join(str(getattr(exc, "details", exc)).split())
    if isinstance(exc, errors.InputError):
        return details, EXIT_USAGE
    if isinstance(exc, errors.InvalidArgumentError):
        return f"the {service} refused the request (INVALID_ARGUMENT): {details}", EXIT_USAGE
    if isinstance(exc, errors.UnavailableError):
        if any(hint in details.lower() for hint in _TRANSPORT_HINTS):
            return f"cannot reach {target} (UNAVAILABLE): is the {service} running? ({details})", EXIT_UNAVAILABLE
        return f"the {service} at {target} is unavailable (UNAVAILABLE): {details}", EXIT_UNAVAILABLE
    if isinstance(exc, errors.UnauthenticatedError):
        return f"the {service} refused the call (UNAUTHENTICATED): {details}; pass --token or set INTERNVL_TOKEN", (
            EXIT_USAGE
        )
    if isinstance(exc, errors.DeadlineExceededError):
        return f"no answer within --timeout {timeout:g} s (DEADLINE_EXCEEDED): {details}", EXIT_ERROR
    if isinstance(exc, errors.InternVLError):
        return f"{exc.code_name}: {details}", EXIT_ERROR
    if isinstance(exc, (TypeError, ValueError)):
        return details, EXIT_USAGE
    return f"{type(exc).__name__}: {details}", EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    from internvl_serve.clients.client import InternVLClient

    if args.num_frames < 0:
        raise ValueError("--num-frames must be >= 0")
    from internvl_serve.clients.cli_tracing import tracing_from_env

    telemetry = tracing_from_env()
    client = InternVLClient(
        args.target,
        timeout=args.timeout,
        allow_urls=args.allow_urls,
        num_frames=args.num_frames,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=args.token,
        tracer_provider=telemetry.tracer_provider if telemetry else None,
    )
    try:
        with client:
            return _generate(client, args) if args.command == "generate" else _encode(client, args)
    finally:
        if telemetry is not None:
            telemetry.shutdown()  # export the call's span before exiting


def conversation_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The chat the generate command sends: an optional system turn, then one user turn with the images,
    the videos and the prompt, in that order."""
    from internvl_serve.clients.fetch import is_url

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    content: list[dict[str, Any]] = []
    for kind, values in (("image", args.image), ("video", args.video)):
        content += [{"type": kind, ("url" if is_url(v) else "path"): v} for v in values]
    content.append({"type": "text", "text": prompt})
    system = [{"role": "system", "content": args.system}] if args.system else []
    return [*system, {"role": "user", "content": content}]


def sampling_from_args(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "repetition_penalty", "ignore_eos")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _generate(client: Any, args: argparse.Namespace) -> int:
    conversation = conversation_from_args(args)
    sampling = sampling_from_args(args)
    if not args.stream:
        result = client.generate(conversation, request_id=args.request_id, **sampling)
        print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else result.text)
        return EXIT_OK
    for delta in client.stream(conversation, request_id=args.request_id, **sampling):
        if args.json:
            print(json.dumps(delta.to_dict(), ensure_ascii=False), flush=True)
        else:
            sys.stdout.write(delta.text)
            sys.stdout.flush()
    if not args.json:
        print(flush=True)
    return EXIT_OK


def _encode(client: Any, args: argparse.Namespace) -> int:
    from internvl_serve.clients.fetch import is_url
    from internvl_serve.clients.media import read_file

    items = [p if is_url(p) else read_file(p, "media") for p in args.paths]  # read first: a missing file fails fast
    for path, item in zip(args.paths, client.encode(items)):
        print(json.dumps({"path": path, **item.to_dict()}) if args.json else item.media_id, flush=True)
        if not item.reusable:
            print(
                f"internvl-client: note: {path} was encoded but not cached (the encoder's cache is "
                "unavailable): its media_id cannot be reused",
                file=sys.stderr,
            )
    return EXIT_OK
