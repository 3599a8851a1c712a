"""LocalStack: redis-server, one encoder and one decoder as child processes, started in order, watched, and
stopped in reverse order (decoder drains first, then the encoder, then redis)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from internvl_serve.common.config_fields import field_env
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.stack.healthcheck import check
from internvl_serve.stack.processes import RedisProcess, ServiceProcess
from internvl_serve.stack.progress import Progress, last_event, tail

HEARTBEAT_S = 10.0  # a "still loading" line this often while models load


def split_cores(num_cores: int) -> tuple[int, int]:
    """(encoder, decoder) torch threads for one machine. The decoder's steps are most of a chat's compute
    and the encoder is idle between images (and on cache hits), so on a small machine the decoder takes
    every core and the encoder one (measured on 2 cores, all-at-once serving benchmark: 1/2 threads gave
    149-173 output tokens/s, 2/2 140, 1/1 112); from 4 cores on, the encoder gets a quarter and the
    decoder the rest, so they no longer contend."""
    if num_cores < 4:
        return 1, max(1, num_cores)
    encoder = max(1, round(num_cores / 4))
    return encoder, num_cores - encoder


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"ended by {signal.Signals(-code).name}"
    return f"exit code {code}"


def stopped_cleanly(code: int | None) -> bool:
    """0, or ended by the SIGTERM we sent before the service had installed its handler (still loading)."""
    return code in (0, None, -signal.SIGTERM)


# Ports `up` chooses for each child itself: their variables, inherited from up's environment, must not reach
# the children (one $INTERNVL_METRICS_PORT would give both the same port; $INTERNVL_HTTP_PORT would undo --no-http).
_UP_MANAGED_ENV = tuple(field_env(DecoderConfig, name) for name in ("metrics_port", "http_port"))


def _port_flag(flag: str, port: int | None) -> list[str]:
    return [] if port is None else [flag, str(port)]


class StackFailed(RuntimeError):
    """A child process could not start or exited on its own; the message carries its log tail."""


class Interrupted(RuntimeError):
    """A stop was asked for (Ctrl-C / SIGTERM) before the stack was ready."""


@dataclass(frozen=True)
class StackConfig:
    model_dir: str
    host: str  # where the encoder and decoder listen
    connect_host: str  # how this machine reaches them (127.0.0.1 when host is 0.0.0.0)
    decoder_port: int
    encoder_port: int
    redis_port: int | None  # None: no cache
    log_dir: Path
    decoder_metrics_port: int | None = None  # Prometheus /metrics (None: not served)
    encoder_metrics_port: int | None = None
    http_port: int | None = None  # the decoder's OpenAI-compatible API (None: not served)
    redis_maxmemory: str = "1gb"
    device: str | None = None  # None: the services' own default (INTERNVL_DEVICE, else auto)
    dtype: str | None = None
    log_level: str | None = None  # None: the services' own default (INTERNVL_LOG_LEVEL, else theirs)
    encoder_threads: int = 0  # torch threads of each service (0: the service's default)
    decoder_threads: int = 0
    startup_timeout_s: float = 600.0
    stop_timeout_s: float = 30.0

    def address(self, port: int) -> str:
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"{host}:{port}"

    @property
    def decoder_address(self) -> str:
        return self.address(self.decoder_port)

    @property
    def encoder_address(self) -> str:
        return self.address(self.encoder_port)

    @property
    def metrics_urls(self) -> dict[str, str]:
        """{"decoder": "http://HOST:PORT/metrics", "encoder": ...} of the services serving /metrics."""
        ports = {"decoder": self.decoder_metrics_port, "encoder": self.encoder_metrics_port}
        return {name: f"http://{self.address(port)}/metrics" for name, port in ports.items() if port is not None}

    @property
    def http_url(self) -> str | None:
        """The OpenAI-compatible API's base URL (…/v1), or None."""
        return None if self.http_port is None else f"http://{self.address(self.http_port)}/v1"

    @property
    def redis_url(self) -> str | None:
        return None if self.redis_port is None else f"redis://127.0.0.1:{self.redis_port}/0"


class LocalStack:
    def __init__(self, config: StackConfig, progress: Progress):
        self.config = config
        self.progress = progress
        self.redis: RedisProcess | None = None
        self.services: dict[str, ServiceProcess] = {}  # in start order: encoder, decoder
        self.logs: dict[str, Path] = {name: config.log_dir / f"{name}.log" for name in ("redis", "encoder", "decoder")}

    # -- start ---------------------------------------------------------------------------------------
    def start(self, should_stop: Callable[[], bool]) -> None:
        c = self.config
        c.log_dir.mkdir(parents=True, exist_ok=True)
        for log in self.logs.values():
            log.unlink(missing_ok=True)  # this run's lines only
        if c.redis_port is not None:
            self._start_redis()
        else:
            self.progress.line("redis: not started (--no-redis): the encoder runs without an embedding cache")
        common = [
            *(["--device", c.device] if c.device else []),
            *(["--dtype", c.dtype] if c.dtype else []),
            *(["--log-level", c.log_level] if c.log_level else []),
        ]
        cache = ["--redis-url", c.redis_url] if c.redis_url else []
        encoder = ["--model", c.model_dir, "--host", c.host, "--num-threads", str(c.encoder_threads)]
        encoder += _port_flag("--metrics-port", c.encoder_metrics_port)
        self._spawn("encoder", c.encoder_port, [*encoder, *cache, *common])
        decoder = ["--model", c.model_dir, "--host", c.host, "--num-threads", str(c.decoder_threads)]
        decoder += _port_flag("--metrics-port", c.decoder_metrics_port)
        decoder += _port_flag("--http-port", c.http_port)
        self._spawn("decoder", c.decoder_port, [*decoder, "--encoder", c.encoder_address, *cache, *common])
        self._wait_all_healthy(should_stop)

    def _start_redis(self) -> None:
        c = self.config
        started = time.monotonic()
        try:
            self.redis = RedisProcess(
                "--maxmemory",
                c.redis_maxmemory,
                "--maxmemory-policy",
                "allkeys-lru",
                port=c.redis_port,
                log_path=self.logs["redis"],
                own_group=True,
            )
        except RuntimeError as exc:
            raise StackFailed(self._with_tail(f"redis-server: {exc}", "redis")) from None
        self.progress.line(
            f"redis ready on 127.0.0.1:{c.redis_port} in {time.monotonic() - started:.1f} s "
            f"(embedding cache, maxmemory {c.redis_maxmemory}, allkeys-lru, no persistence)"
        )

    def _spawn(self, name: str, port: int, args: list[str]) -> None:
        # The environment is inherited: OTEL_EXPORTER_OTLP_ENDPOINT etc. reach both services (their default
        # OTEL service names are internvl-encoder / internvl-decoder).
        self.services[name] = ServiceProcess(
            name, args, port=port, log_path=self.logs[name], own_group=True, drop_env=_UP_MANAGED_ENV
        )
        self.progress.line(f"{name} loading on {self.config.address(port)}… (log: {self.logs[name]})")

    def _wait_all_healthy(self, should_stop: Callable[[], bool]) -> None:
        started = time.monotonic()
        pending = dict(self.services)
        next_beat = started + HEARTBEAT_S
        while pending:
            if should_stop():
                raise Interrupted("stopped while starting")
            for name, service in list(pending.items()):
                if service.proc.poll() is not None:
                    raise StackFailed(
                        self._with_tail(f"{name} exited with code {service.proc.returncode} while loading", name)
                    )
                if check(self.config.address(service.port), timeout_s=1.0) == "SERVING":
                    del pending[name]
                    self.progress.line(
                        f"{name} ready on {self.config.address(service.port)} in {time.monotonic() - started:.1f} s"
                    )
            now = time.monotonic()
            if pending and now - started > self.config.startup_timeout_s:
                names = ", ".join(pending)
                raise StackFailed(
                    self._with_tail(
                        f"{names} not healthy after {self.config.startup_timeout_s:.0f} s (--startup-timeout-s)",
                        next(iter(pending)),
                    )
                )
            if pending and now >= next_beat:
                next_beat = now + HEARTBEAT_S
                states = [f"{n} ({last_event(self.logs[n]) or 'starting'})" for n in pending]
                self.progress.line(f"still loading: {', '.join(states)}")
            if pending:
                time.sleep(0.25)

    # -- run -----------------------------------------------------------------------------------------
    def watch(self, should_stop: Callable[[], bool], poll_s: float = 0.5) -> None:
        """Block until a stop is asked for; StackFailed when a child exits on its own."""
        while not should_stop():
            for name, proc in self.children():
                if proc.poll() is not None:
                    raise StackFailed(self._with_tail(f"{name} exited on its own with code {proc.returncode}", name))
            time.sleep(poll_s)

    def children(self) -> list[tuple[str, subprocess.Popen]]:
        kids = [(n, s.proc) for n, s in self.services.items()]
        if self.redis is not None:
            kids.append(("redis", self.redis.proc))
        return kids

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.children()}

    # -- stop ----------------------------------------------------------------------------------------
    def stop(self) -> dict[str, int | None]:
        """Reverse order: decoder (drains in-flight requests), encoder, redis. Returns each exit code."""
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.services)):
            service = self.services[name]
            already = service.proc.poll() is not None
            if not already:
                what = " (draining in-flight requests)" if name == "decoder" else ""
                self.progress.line(f"stopping {name}{what}…")
            codes[name] = service.stop(self.config.stop_timeout_s)
            state = "had exited" if already else "stopped"
            self.progress.line(f"{name} {state} ({describe_exit(codes[name])})")
        if self.redis is not None:
            running = self.redis.proc.poll() is None
            self.redis.stop()
            codes["redis"] = self.redis.proc.returncode
            if running:
                self.progress.line(f"redis stopped ({describe_exit(codes['redis'])})")
        return codes

    def kill(self) -> None:
        """A second Ctrl-C: no more waiting."""
        for _, proc in self.children():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _with_tail(self, message: str, name: str) -> str:
        lines = tail(self.logs.get(name), 20)
        if not lines:
            return message
        return f"{message}; last lines of {self.logs[name]}:\n" + "\n".join(f"    {s}" for s in lines)
