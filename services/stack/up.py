"""`internvl-serve up`: the whole stack on this machine (redis-server, one encoder, one decoder) with embedded
defaults; it prints where to send requests, and stops everything in order on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from internvl_serve.common.config_fields import field_default, field_env
from internvl_serve.common.placement import DTYPES
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.encoder.config import EncoderConfig
from internvl_serve.stack.local_stack import (
    Interrupted,
    LocalStack,
    StackConfig,
    StackFailed,
    describe_exit,
    split_cores,
    stopped_cleanly,
)
from internvl_serve.stack.ports import PortError, choose_port, metrics_ports_wanted
from internvl_serve.stack.processes import REDIS_INSTALL_HINT
from internvl_serve.stack.progress import Progress

# The services' own defaults (their config dataclasses hold them); redis's is its standard port.
DEFAULT_DECODER_PORT = field_default(DecoderConfig, "port")
DEFAULT_HTTP_PORT = 8000  # the OpenAI-compatible API (the decoder's own default is off)
DEFAULT_ENCODER_PORT = field_default(EncoderConfig, "port")
DEFAULT_REDIS_PORT = 6379
DEFAULT_HOST = field_default(DecoderConfig, "host")
DEFAULT_LOG_LEVEL = field_default(DecoderConfig, "log_level")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEMO_PROMPT = "Describe this image."


class RedisMissing(RuntimeError):
    """redis-server is not installed and --no-redis was not given."""


def serve_home() -> Path:
    return Path(os.environ.get("INTERNVL_SERVE_HOME", Path.home() / ".cache" / "internvl-serve"))


def _service_default(name: str) -> str:
    """A setting both services share, as they would take it: their environment variable, else their default."""
    env, default = field_env(DecoderConfig, name), field_default(DecoderConfig, name)
    return os.environ.get(env, default) if env else default


def add_up(sub: argparse._SubParsersAction) -> None:
    log_level_env = field_env(DecoderConfig, "log_level")
    max_memory = field_default(StackConfig, "redis_maxmemory")
    startup_timeout_s = field_default(StackConfig, "startup_timeout_s")
    p = sub.add_parser(
        "up",
        help="run the whole stack on this machine: redis-server, one encoder, one decoder",
        description="Start redis-server (embedding cache), one vision encoder and one decoder as child processes, "
        "wait until all are healthy, print the address and a client command, and serve until Ctrl-C or SIGTERM "
        "(then stop the decoder, letting in-flight requests finish, the encoder, and redis, in that order). With "
        "no --model it builds once and uses a tiny random checkpoint, which works offline and answers with "
        "random text. A default port that is busy is replaced by a free one; a busy port you name is an error.",
    )
    p.add_argument("--model", help="checkpoint directory or hub id (-hf format); default: the embedded tiny checkpoint")
    p.add_argument(
        "--host",
        default=_service_default("host"),
        help=f"address the encoder and decoder listen on (default {DEFAULT_HOST}; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        metavar="N",
        help=f"decoder (GenerationService) port (default {DEFAULT_DECODER_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--encoder-port",
        type=int,
        default=None,
        metavar="N",
        help=f"encoder (VisionEncoderService) port (default {DEFAULT_ENCODER_PORT})",
    )
    p.add_argument(
        "--redis-port",
        type=int,
        default=None,
        metavar="N",
        help=f"redis-server port, on 127.0.0.1 only (default {DEFAULT_REDIS_PORT})",
    )
    p.add_argument(
        "--redis-maxmemory",
        default=max_memory,
        metavar="SIZE",
        help=f"redis memory cap; the least recently used embeddings are evicted past it (default {max_memory})",
    )
    p.add_argument("--no-redis", action="store_true", help="run without redis-server (no embedding cache)")
    http_env = field_env(DecoderConfig, "http_port")
    p.add_argument(
        "--http-port",
        type=int,
        default=_service_default("http_port"),
        metavar="N",
        help=f"the decoder's OpenAI-compatible HTTP API (docs/openai.md; default ${http_env}, else "
        f"{DEFAULT_HTTP_PORT}, or a free port when that is busy)",
    )
    p.add_argument("--no-http", action="store_true", help="do not serve the OpenAI-compatible HTTP API")
    metrics_env = field_env(DecoderConfig, "metrics_port")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_service_default("metrics_port"),
        metavar="N",
        help=f"serve Prometheus /metrics: the decoder's on N, the encoder's on N+1 (0 picks free ports; "
        f"default ${metrics_env}, else off)",
    )
    p.add_argument(
        "--encoder-metrics-port",
        type=int,
        default=None,
        metavar="N",
        help="the encoder's /metrics port, with --metrics-port (default: the decoder's + 1)",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where redis.log, encoder.log, decoder.log go (default $INTERNVL_SERVE_HOME/logs, "
        "i.e. ~/.cache/internvl-serve/logs)",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="when all are healthy, write a JSON file with the addresses and pids (removed on stop)",
    )
    p.add_argument("--device", default=None, help="passed to both services: auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["auto", *DTYPES],
        help="passed to both services (default auto: bfloat16 on GPU, float32 on CPU)",
    )
    p.add_argument(
        "--log-level",
        default=_service_default("log_level"),
        metavar="LEVEL",
        help=f"the services' log level (default ${log_level_env}, else {DEFAULT_LOG_LEVEL})",
    )
    p.add_argument(
        "--encoder-threads",
        type=int,
        default=0,
        metavar="N",
        help="torch threads of the encoder (default: 1 below 4 cores, else a quarter of them)",
    )
    p.add_argument(
        "--decoder-threads",
        type=int,
        default=0,
        metavar="N",
        help="torch threads of the decoder (default: every core below 4, else the rest)",
    )
    p.add_argument(
        "--startup-timeout-s",
        type=float,
        default=startup_timeout_s,
        metavar="SECONDS",
        help=f"give up when the services are not healthy after this long (default {startup_timeout_s:g})",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    try:
        if not args.no_redis and shutil.which("redis-server") is None:
            raise RedisMissing(
                f"redis-server is not on PATH; {REDIS_INSTALL_HINT}; or run without the embedding "
                "cache: internvl-serve up --no-redis"
            )
        ports = _choose_ports(args, progress)
    except (RedisMissing, PortError) as exc:
        print(f"internvl-serve up: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        model_dir, tiny = _prepare_model(args.model, progress)
    except KeyboardInterrupt:
        print("internvl-serve up: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    connect_host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    threads = split_cores(os.cpu_count() or 1)
    threads = (args.encoder_threads or threads[0], args.decoder_threads or threads[1])
    config = StackConfig(
        model_dir=str(model_dir),
        host=args.host,
        connect_host=connect_host,
        decoder_port=ports["decoder"],
        encoder_port=ports["encoder"],
        redis_port=ports.get("redis"),
        decoder_metrics_port=ports.get("decoder metrics"),
        http_port=ports.get("http"),
        encoder_metrics_port=ports.get("encoder metrics"),
        log_dir=args.log_dir or serve_home() / "logs",
        redis_maxmemory=args.redis_maxmemory,
        device=args.device,
        dtype=args.dtype,
        log_level=args.log_level,
        encoder_threads=threads[0],
        decoder_threads=threads[1],
        startup_timeout_s=args.startup_timeout_s,
    )
    return _run_stack(config, tiny, args.ready_file, progress)


def _choose_ports(args: argparse.Namespace, progress: Progress) -> dict[str, int]:
    wanted = [
        ("decoder", args.port, DEFAULT_DECODER_PORT, "--port"),
        ("encoder", args.encoder_port, DEFAULT_ENCODER_PORT, "--encoder-port"),
    ]
    if not args.no_redis:
        wanted.append(("redis", args.redis_port, DEFAULT_REDIS_PORT, "--redis-port"))
    if not args.no_http:
        wanted.append(("http", args.http_port, DEFAULT_HTTP_PORT, "--http-port"))
    wanted += metrics_ports_wanted(args.metrics_port, args.encoder_metrics_port)
    # Explicit ports first, so a default never takes a port the user named for another service.
    wanted.sort(key=lambda w: w[1] is None)
    taken: set[int] = set()
    chosen: dict[str, int] = {}
    for name, requested, default, flag in wanted:
        host = "127.0.0.1" if name == "redis" else args.host
        choice = choose_port(name, host, requested, default, flag, taken)
        if choice.replaced_default is not None:
            progress.line(
                f"port {choice.replaced_default} ({name}'s default) is busy; using {choice.port} "
                f"instead (set {flag} to choose)"
            )
        taken.add(choice.port)
        chosen[name] = choice.port
    return chosen


def _prepare_model(model: str | None, progress: Progress) -> tuple[Path, bool]:
    """A local directory for both services (a hub id is downloaded once, here); True for the tiny model."""
    started = time.monotonic()
    if model is None:
        from internvl_serve.tiny_model.default import default_model_dir

        progress.line("preparing the tiny checkpoint (built on the first run only)…")
        path = default_model_dir()
        progress.line(f"tiny checkpoint ready in {time.monotonic() - started:.1f} s: {path}")
        progress.line(
            "note: the tiny checkpoint has random weights, so it answers with random text; "
            "for real answers: internvl-serve up --model OpenGVLab/InternVL3-1B-hf (or a local -hf directory)"
        )
        return path, True
    from internvl_serve.checkpoint import open_checkpoint

    local = Path(model).expanduser()
    progress.line(
        f"checking the checkpoint {model}…"
        if local.is_dir()
        else f"fetching {model} from the Hugging Face hub (cached after the first run)…"
    )
    # CheckpointError: internvl-serve's main prints its one-line message (exit 2)
    path = open_checkpoint(str(local.resolve()) if local.is_dir() else model).path
    progress.line(f"checkpoint ready in {time.monotonic() - started:.1f} s: {path}")
    return path, False


class _Signals:
    """SIGINT/SIGTERM: the first asks for a clean stop; another, while stopping, kills what is left."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.on_repeat = lambda: None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, _frame) -> None:
        if self.requested is None:
            self.requested = signum
        else:
            self.on_repeat()

    def is_set(self) -> bool:
        return self.requested is not None

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _run_stack(config: StackConfig, tiny: bool, ready_file: Path | None, progress: Progress) -> int:
    stack = LocalStack(config, progress)
    signals = _Signals()
    code = EXIT_OK
    try:
        stack.start(signals.is_set)
        if ready_file is not None:
            _write_ready_file(ready_file, config, stack, tiny)
        _print_ready(config, stack, tiny, progress)
        stack.watch(signals.is_set)
        progress.line(f"{signal.Signals(signals.requested).name} received; stopping…")  # type: ignore[arg-type]
    except Interrupted:
        progress.line("stop asked for while starting; stopping…")
    except StackFailed as exc:
        print(f"internvl-serve up: error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_FAILED
    finally:
        signals.on_repeat = stack.kill
        codes = stack.stop()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        signals.restore()
    unclean = {n: describe_exit(c) for n, c in codes.items() if not stopped_cleanly(c)}
    if code == EXIT_OK and unclean:
        print(f"internvl-serve up: error: not every process stopped cleanly: {unclean}", file=sys.stderr)
        code = EXIT_FAILED
    if code == EXIT_OK:
        progress.line("everything stopped")
    return code


def _write_ready_file(path: Path, config: StackConfig, stack: LocalStack, tiny: bool) -> None:
    info = {
        "decoder": config.decoder_address,
        "encoder": config.encoder_address,
        "redis_url": config.redis_url,
        "metrics": config.metrics_urls,
        "http": config.http_url,
        "model": config.model_dir,
        "tiny_model": tiny,
        "log_dir": str(config.log_dir),
        "pids": {"up": os.getpid(), **stack.pids()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(staging, path)  # readers never see a half-written file


def client_command() -> str:
    sibling = Path(sys.executable).with_name("internvl-client")
    on_path = shutil.which("internvl-client")
    if on_path and (not sibling.exists() or Path(on_path).resolve() == sibling.resolve()):
        return "internvl-client"
    return str(sibling) if sibling.exists() else "internvl-client"


def _print_ready(config: StackConfig, stack: LocalStack, tiny: bool, progress: Progress) -> None:
    target = config.decoder_address
    progress.line(f"ready in {progress.elapsed():.1f} s")
    rows = [
        ("decoder (GenerationService)", target),
        ("encoder (VisionEncoderService)", config.encoder_address),
        ("OpenAI-compatible HTTP API", config.http_url or "off (--no-http)"),
        ("redis (embedding cache)", config.redis_url or "off (--no-redis)"),
        *((f"{name} metrics (Prometheus)", url) for name, url in config.metrics_urls.items()),
        ("model", config.model_dir),
        ("logs", str(config.log_dir)),
    ]
    progress.raw()
    for label, value in rows:
        progress.raw(f"  {label:<32} {value}")
    if config.host in ("0.0.0.0", "::"):
        progress.raw(f"  (listening on every interface, {config.host})")
    progress.raw("\nSend a request (any picture in place of cat.jpg):")
    progress.raw(f'  {client_command()} generate --target {target} --image cat.jpg "{DEMO_PROMPT}"')
    progress.raw("or from Python:")
    progress.raw("  from internvl_serve.clients import InternVLClient")
    progress.raw(f'  with InternVLClient("{target}") as client:')
    progress.raw('      chat = [{"role": "user", "content": [{"type": "image", "path": "cat.jpg"},')
    progress.raw(f'                                           {{"type": "text", "text": "{DEMO_PROMPT}"}}]}}]')
    progress.raw("      print(client.generate(chat, max_new_tokens=64).text)")
    if config.http_url:
        progress.raw("or with any OpenAI client (docs/openai.md):")
        body = '{"messages": [{"role": "user", "content": "Write a haiku"}], "max_tokens": 32}'
        progress.raw(f"  curl -s {config.http_url}/chat/completions -H 'content-type: application/json' -d '{body}'")
    if tiny:
        progress.raw("(the tiny checkpoint answers with random text: it checks the plumbing, not the model)")
    progress.raw("\nServing. Press Ctrl-C to stop.\n")
