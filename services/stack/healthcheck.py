"""`internvl-serve healthcheck HOST:PORT`: exit 0 when grpc.health.v1 says SERVING (container health checks).

It imports only grpc (no torch), so a container can run it every few seconds; `internvl_serve.cli.main`
dispatches to it before building the full command line.
"""

from __future__ import annotations

import argparse
import sys

EXIT_SERVING, EXIT_NOT_SERVING, EXIT_USAGE = 0, 1, 2


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The health status name at `address` ("SERVING", "NOT_SERVING", ...), or "UNREACHABLE: <code>"."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"UNREACHABLE: {exc.code().name}"  # type: ignore[attr-defined]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", metavar="HOST:PORT", help="the gRPC server to ask (encoder or decoder)")
    p.add_argument("--service", default="", help='service name to check (default "": the whole server)')
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="deadline of the check")
    p.add_argument("--quiet", action="store_true", help="print nothing; the exit code says it")


def add_healthcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "healthcheck",
        help="exit 0 when a server's grpc.health.v1 status is SERVING (for container health checks)",
        description="Ask HOST:PORT's grpc.health.v1.Health/Check. Exit codes: 0 SERVING, 1 anything else "
        "(NOT_SERVING, unknown service, unreachable, timeout), 2 usage.",
    )
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    status = check(args.address, args.service, args.timeout)
    if not args.quiet:
        print(f"{args.address}{' ' + args.service if args.service else ''}: {status}")
    return EXIT_SERVING if status == "SERVING" else EXIT_NOT_SERVING


def main(argv: list[str]) -> int:
    """The light path: parse only this subcommand's arguments (no torch import)."""
    p = argparse.ArgumentParser(prog="internvl-serve healthcheck")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
