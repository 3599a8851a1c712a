"""`internvl-serve healthcheck HOST:PORT`: exit 0 only for SERVING, and no torch import on its path."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from internvl_serve.cli import main
from internvl_serve.stack.processes import free_port


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_serving_is_exit_0_and_everything_else_exit_1(health_server, capsys):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["healthcheck", address]) == 1
    assert capsys.readouterr().out.strip() == f"{address}: NOT_SERVING"
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert main(["healthcheck", "--quiet", address]) == 0
    assert capsys.readouterr().out == ""
    assert main(["healthcheck", address, "--service", "internvl.v1.NoSuchService"]) == 1  # NOT_FOUND
    assert "UNREACHABLE: NOT_FOUND" in capsys.readouterr().out


def test_nothing_listening_is_exit_1():
    assert main(["healthcheck", "--quiet", "--timeout", "2", f"127.0.0.1:{free_port()}"]) == 1


def test_the_command_line_path_does_not_import_torch(health_server):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    code = (
        "import sys; from internvl_serve.cli import main; rc = main(['healthcheck', '--quiet', %r]); "
        "sys.exit(rc if 'torch' not in sys.modules else 7)" % address
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_it_is_listed_in_the_main_parser():
    from internvl_serve.cli import build_parser

    args = build_parser().parse_args(["healthcheck", "127.0.0.1:50051", "--service", "x", "--timeout", "1"])
    assert (args.address, args.service, args.timeout) == ("127.0.0.1:50051", "x", 1.0)
