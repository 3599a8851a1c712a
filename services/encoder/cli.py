"""`internvl-serve encoder ...`"""

from __future__ import annotations

import argparse

from internvl_serve.common.service_command import add_service_command


def _config_type():
    from internvl_serve.encoder.config import EncoderConfig

    return EncoderConfig


def _build_config(args: argparse.Namespace):
    from internvl_serve.encoder.config import encoder_config_from_args

    return encoder_config_from_args(args)


def _server_type():
    from internvl_serve.encoder.server import EncoderServer

    return EncoderServer


def add_encoder(sub: argparse._SubParsersAction) -> None:
    add_service_command(
        sub,
        "encoder",
        help="serve internvl.v1.VisionEncoderService (images/videos -> embeddings, Redis cache)",
        description="Serve VisionEncoderService.Encode with gRPC health and reflection. Loads only the vision "
        "tower and projector of the checkpoint. Redis is optional; when it is down the service computes "
        "and carries on.",
        config_type=_config_type,
        build_config=_build_config,
        server_type=_server_type,
    )
