"""`internvl-serve decoder ...`"""

from __future__ import annotations

import argparse
import asyncio


def add_decoder(sub: argparse._SubParsersAction) -> None:
    from internvl_serve.decoder.config import add_decoder_arguments

    p = sub.add_parser(
        "decoder",
        help="serve internvl.v1.GenerationService (Qwen2 on paged attention, continuous batching, streaming)",
        description="Serve GenerationService.Generate/GenerateStream with gRPC health and reflection. Loads only "
        "the language model and lm_head; images and videos are encoded by the --encoder services; media_id "
        "parts are read from their Redis cache directly when --redis-url is given, else resolved by them.",
    )
    add_decoder_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from internvl_serve.common.logs import setup_logging
    from internvl_serve.decoder.config import decoder_config_from_args
    from internvl_serve.decoder.service.server import run_decoder

    config = decoder_config_from_args(args)
    setup_logging(config.log_level)
    asyncio.run(run_decoder(config))
    return 0
