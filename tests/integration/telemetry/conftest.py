"""A real stack in-process (redis-server, encoder, decoder on real ports) whose services export their spans to
one InMemorySpanExporter and their metrics to InMemoryMetricReaders, through the telemetry module's test hook,
and a client library instance with its own tracer provider (service.name internvl-client)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from internvl_testing.decoder_server import decoder_config
from internvl_testing.encoder_server import encoder_config
from internvl_testing.redis_server import RedisServer
from internvl_testing.servers import ServerThread
from internvl_testing.telemetry import in_memory_telemetry


@pytest.fixture(scope="module")
def traced_stack(tiny_model_dir):
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from internvl_serve.clients import InternVLClient
    from internvl_serve.decoder.service.server import DecoderServer
    from internvl_serve.encoder.server import EncoderServer

    spans = InMemorySpanExporter()
    readers = {"encoder": InMemoryMetricReader(), "decoder": InMemoryMetricReader()}
    telemetry = {
        "encoder": in_memory_telemetry("internvl-encoder", spans, readers["encoder"]),
        "decoder": in_memory_telemetry("internvl-decoder", spans, readers["decoder"]),
        "client": in_memory_telemetry("internvl-client", spans),
    }
    redis = RedisServer()
    encoder = ServerThread(lambda: EncoderServer(encoder_config(tiny_model_dir, redis.url), telemetry["encoder"]))
    decoder = ServerThread(
        lambda: DecoderServer(decoder_config(tiny_model_dir, [encoder.address]), telemetry["decoder"])
    )
    client = InternVLClient(
        decoder.address,
        encoder_target=encoder.address,
        timeout=120,
        tracer_provider=telemetry["client"].tracer_provider,
    )
    yield SimpleNamespace(
        spans=spans, readers=readers, telemetry=telemetry, redis=redis, encoder=encoder, decoder=decoder, client=client
    )
    client.close()
    decoder.close()
    encoder.close()
    redis.stop()
    for t in telemetry.values():
        t.shutdown()
