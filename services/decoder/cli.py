"""`internvl-serve decoder ...`"""

from __future__ import annotations

import argparse

from internvl_serve.common.service_command import add_service_command


def _config_type():
    from internvl_serve.decoder.config import DecoderConfig

    return DecoderConfig


def _build_config(args: argparse.Namespace):
    from internvl_serve.decoder.config import decoder_config_from_args

    return decoder_config_from_args(args)


def _server_type():
    from internvl_serve.decoder.service.server import DecoderServer

    return DecoderServer


def add_decoder(sub: argparse._SubParsersAction) -> None:
    add_service_command(
        sub,
        "decoder",
        help="serve internvl.v1.GenerationService (Qwen2 on paged attention, continuous batching, streaming)",
        description="Serve GenerationService.Generate/GenerateStream with gRPC health and reflection. Loads only "
        "the language model and lm_head; images and videos are encoded by the --encoder services; media_id "
        "parts are read from their Redis cache directly when --redis-url is given, else resolved by them.",
        config_type=_config_type,
        build_config=_build_config,
        server_type=_server_type,
    )
