"""Local processes: a redis-server on a free loopback port, and our gRPC services waited on until healthy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from internvl_serve.stack.ports import any_free_port


def free_port() -> int:
    """A port nothing listens on, on the loopback interface."""
    return any_free_port("127.0.0.1")


REDIS_INSTALL_HINT = "install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"


def own_group_options(own_group: bool) -> dict:
    """Popen options. own_group: the child gets its own session, so a Ctrl-C in the terminal reaches only
    the parent (which then stops its children in order), and on Linux it gets SIGTERM if the parent dies."""
    if not own_group:
        return {}
    options: dict = {"start_new_session": True}
    set_parent_death_signal = _parent_death_signal_setter()
    if set_parent_death_signal is not None:
        options["preexec_fn"] = set_parent_death_signal
    return options


def _parent_death_signal_setter():
    """A callable for preexec_fn: prctl(PR_SET_PDEATHSIG, SIGTERM), resolved here in the parent so the child,
    between fork and exec, only calls into libc (no import, no dlopen); None off Linux or without glibc."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import functools
    import signal

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return functools.partial(prctl, 1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


class RedisProcess:
    """redis-server with no persistence on 127.0.0.1; `extra_args` go on its command line."""

    def __init__(
        self, *extra_args: str, port: int | None = None, log_path: Path | None = None, own_group: bool = False
    ):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(f"redis-server is not on PATH; {REDIS_INSTALL_HINT}")
        self.port = port or free_port()
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra_args],
                stdout=log,
                stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
                **own_group_options(own_group),
            )
        finally:
            if log_path:
                log.close()  # the child holds its own copy
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout_s: float = 2.0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_healthy(address: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll grpc.health.v1 until the server says SERVING; fail early if its process exits."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server at {address} exited with code {proc.returncode} while starting")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} was not SERVING after {timeout_s:.0f}s")


class ServiceProcess:
    """`internvl-serve <command> ... --port P` in its own process, waited on until healthy."""

    def __init__(
        self,
        command: str,
        args: list[str],
        *,
        port: int | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        drop_env: tuple[str, ...] = (),
        own_group: bool = False,
    ):
        self.port = port or free_port()
        exe = Path(sys.executable).with_name("internvl-serve")
        argv = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "internvl_serve.cli"])]
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [*argv, command, *args, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop_env},
            **own_group_options(own_group),
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        wait_healthy(self.address, timeout_s, self.proc)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode
