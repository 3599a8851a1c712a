"""`internvl-serve encoder ...`"""

from __future__ import annotations

import argparse
import asyncio


def add_encoder(sub: argparse._SubParsersAction) -> None:
    from internvl_serve.encoder.config import add_encoder_arguments

    p = sub.add_parser(
        "encoder",
        help="serve internvl.v1.VisionEncoderService (images/videos -> embeddings, Redis cache)",
        description="Serve VisionEncoderService.Encode with gRPC health and reflection. Loads only the vision "
        "tower and projector of the checkpoint. Redis is optional; when it is down the service computes "
        "and carries on.",
    )
    add_encoder_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from internvl_serve.common.logs import setup_logging
    from internvl_serve.encoder.config import encoder_config_from_args
    from internvl_serve.encoder.server import run_encoder

    config = encoder_config_from_args(args)
    setup_logging(config.log_level)
    asyncio.run(run_encoder(config))
    return 0
