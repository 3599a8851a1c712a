"""A secured stack in-process: the encoder with mutual TLS and tokens, the decoder with TLS and tokens,
the decoder authenticating to the encoder with a service token and a client certificate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from internvl_testing.certs import Pki, make_pki
from internvl_testing.decoder_server import decoder_config
from internvl_testing.encoder_server import encoder_config, start_encoder

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"
DECODER = "decoder-service-token-0123456789"


@dataclass
class SecureStack:
    pki: Pki
    encoder: object
    decoder: object
    spans: object  # the decoder's InMemorySpanExporter


@pytest.fixture(scope="package")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write_tokens(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="package")
def secure_stack(tiny_model_dir, redis_server, pki, tmp_path_factory):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from internvl_serve.common.tls import EncoderLinkTls, ServerTls
    from internvl_serve.decoder.service.server import DecoderServer
    from internvl_testing.servers import ServerThread
    from internvl_testing.telemetry import in_memory_telemetry

    root = tmp_path_factory.mktemp("tokens")
    encoder_tokens = write_tokens(
        root / "encoder.tokens", f"# the decoder acts for its callers' tenants\n{DECODER} *\n{ALICE} alice\n{BOB} bob\n"
    )
    decoder_tokens = write_tokens(root / "decoder.tokens", f"{ALICE} alice  # Alice's team\n{BOB} bob\n")
    mutual = ServerTls(cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca))
    encoder = start_encoder(
        dataclasses.replace(
            encoder_config(tiny_model_dir, redis_server.url), tls=mutual, auth_tokens_file=encoder_tokens
        )
    )
    config = decoder_config(
        tiny_model_dir,
        [f"localhost:{encoder.port}"],
        tls=ServerTls(cert=str(pki.server_cert), key=str(pki.server_key)),
        auth_tokens_file=decoder_tokens,
        encoder_tls=EncoderLinkTls(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key)),
        encoder_token=DECODER,
        cache=encoder.server.config.cache,
        http_port=0,  # the OpenAI-compatible API: the same certificate and tokens
    )
    spans = InMemorySpanExporter()
    decoder = ServerThread(lambda: DecoderServer(config, telemetry=in_memory_telemetry("internvl-decoder", spans)))
    yield SecureStack(pki, encoder, decoder, spans)
    decoder.close()
    encoder.close()
