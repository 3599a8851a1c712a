"""The `internvl-serve encoder` and `internvl-serve decoder` subcommands, made one way: flags derived from
the service's config dataclass, logging set up, the server run until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
from collections.abc import Callable
from typing import Any


def add_service_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    config_type: Callable[[], type],
    build_config: Callable[[argparse.Namespace], Any],
    server_type: Callable[[], type],
) -> argparse.ArgumentParser:
    """The service's modules are imported late (`config_type` when the parser is built, `server_type` when the
    command runs), so importing this module, or a service's cli module, is cheap."""
    from internvl_serve.common.config_fields import add_config_arguments

    parser = sub.add_parser(name, help=help, description=description)
    add_config_arguments(parser, config_type())
    parser.set_defaults(run=functools.partial(_run, build_config, server_type, parser=parser))
    return parser


def _run(
    build_config: Callable,
    server_type: Callable[[], type],
    args: argparse.Namespace,
    *,
    parser: argparse.ArgumentParser,
) -> int:
    """`parser`: the subcommand's, so a config that fails validation is a usage error (exit 2)."""
    from internvl_serve.common.errors import StartupError
    from internvl_serve.common.grpc_server import serve_until_signal
    from internvl_serve.common.logs import setup_logging

    try:
        config = build_config(args)
    except ValueError as exc:  # the config's validation: "internvl-serve encoder: error: ...", exit 2
        parser.error(str(exc))
    setup_logging(config.log_level)
    if config.num_threads:  # process-wide, so only here: in-process test servers share one process
        import torch

        torch.set_num_threads(config.num_threads)
    server_cls = server_type()

    async def serve() -> None:
        try:
            server = server_cls(config)  # built inside the loop: grpc.aio binds to it
        except StartupError as exc:  # a TLS or tokens file it cannot use, an address that does not resolve
            parser.error(str(exc))
        if code := await serve_until_signal(server):
            # Failed (ServiceServer.fail): exit now; a thread stuck on a dead peer must not hold the exit up.
            logging.shutdown()
            os._exit(code)

    asyncio.run(serve())
    return 0
