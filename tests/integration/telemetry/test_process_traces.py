"""A real three-process stack (redis-server, `internvl-serve encoder`, `internvl-serve decoder`) exporting OTLP
over gRPC, configured only by the standard OTEL_* variables, to a receiver in the test process: one request
from the client library gives one trace across the client, the decoder and the encoder (with its Redis
spans), with the right parents and service names; SIGTERM flushes the services' spans and metrics."""

from __future__ import annotations

from internvl_serve.stack.processes import ServiceProcess
from internvl_testing.media import noise_image
from internvl_testing.redis_server import RedisServer
from internvl_testing.telemetry import OtlpReceiver, assert_no_text, only, wait_for

GENERATE = "internvl.v1.GenerationService/Generate"
ENCODE = "internvl.v1.VisionEncoderService/Encode"
SECRET = "otter-SECRET-prompt-0815"


def _client_telemetry(receiver: OtlpReceiver):
    """The test process's client: its own provider exporting to the receiver (OTLP/gRPC) as each span ends."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    from internvl_serve.common.telemetry import TelemetrySettings, setup_telemetry

    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.port}", insecure=True)
    return setup_telemetry(
        "internvl-client", span_exporters=[exporter], settings=TelemetrySettings.from_env("internvl-client", env={})
    )


def test_three_processes_one_trace_over_otlp(tiny_model_dir, tmp_path, monkeypatch):
    from internvl_serve.clients import InternVLClient

    for name in (
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_TRACES_SAMPLER",
        "OTEL_SDK_DISABLED",
        "INTERNVL_TRACE_CONTENT",
    ):
        monkeypatch.delenv(name, raising=False)
    receiver = OtlpReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,  # exporters default to otlp once this is set
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",  # metrics arrive with the flush on SIGTERM
    }
    redis = RedisServer()
    encoder = ServiceProcess(
        "encoder",
        ["--model", str(tiny_model_dir), "--redis-url", redis.url],
        env=env,
        log_path=tmp_path / "encoder.log",
    )
    decoder = ServiceProcess(
        "decoder",
        ["--model", str(tiny_model_dir), "--encoder", encoder.address],
        env=env,
        log_path=tmp_path / "decoder.log",
    )
    client_telemetry = _client_telemetry(receiver)
    try:
        encoder.wait_healthy()
        decoder.wait_healthy()  # health polling: must leave no spans
        image = tmp_path / "cat.png"
        noise_image(120, 72, 301).save(image)
        chat = [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": SECRET}]}]
        with InternVLClient(decoder.address, tracer_provider=client_telemetry.tracer_provider, timeout=120) as client:
            result = client.generate(chat, max_new_tokens=3, ignore_eos=True)
        assert decoder.stop() == 0 and encoder.stop() == 0  # SIGTERM: the services flush on the way out
    finally:
        decoder.stop()
        encoder.stop()
        redis.stop()
        client_telemetry.shutdown()

    spans = wait_for(lambda: (lambda s: s if any(x.name == "GET" for x in s) else None)(receiver.spans()), 5.0)
    receiver.stop()
    assert spans, "the receiver got no spans"
    client = only(spans, name=GENERATE, kind="CLIENT")
    assert {s.trace_id for s in spans} == {client.trace_id}, "every exported span belongs to the one request"
    assert {s.service for s in spans} == {"internvl-client", "internvl-decoder", "internvl-encoder"}
    assert not [s for s in spans if "Health" in s.name or "Reflection" in s.name]

    server = only(spans, name=GENERATE, kind="SERVER")
    chat_span = only(spans, name=f"chat {result.model}")
    enc_client = only(spans, name=ENCODE, kind="CLIENT")
    enc_server = only(spans, name=ENCODE, kind="SERVER")
    media = only(spans, name="internvl.encode_media")
    get, put = only(spans, name="GET"), only(spans, name="SET")
    assert client.service == "internvl-client" and client.parent_id is None
    assert (server.service, server.parent_id) == ("internvl-decoder", client.span_id)
    assert (chat_span.service, chat_span.parent_id) == ("internvl-decoder", server.span_id)
    assert (enc_client.service, enc_client.parent_id) == ("internvl-decoder", chat_span.span_id)
    assert (enc_server.service, enc_server.parent_id) == ("internvl-encoder", enc_client.span_id)
    assert media.parent_id == enc_server.span_id and get.parent_id == media.span_id and put.parent_id == media.span_id
    assert get.attributes["db.system.name"] == "redis" and put.attributes["db.operation.name"] == "SET"

    a = chat_span.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == result.model
    assert a["gen_ai.request.max_tokens"] == 3
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (result.usage.input_tokens, 3)
    assert a["gen_ai.response.finish_reasons"] == ["length"]
    assert a["internvl.image_tokens"] == result.usage.image_tokens > 0 and a["internvl.media_cache_hits"] == 0
    assert a["internvl.queue_time_s"] >= 0 and a["internvl.time_to_first_token_s"] > 0
    assert_no_text(spans, SECRET)

    metrics = receiver.metrics()  # exported by each service's final flush on SIGTERM
    ttft = [(svc, p) for svc, attrs, p in metrics.get("gen_ai.server.time_to_first_token", [])]
    assert [p.count for svc, p in ttft if svc == "internvl-decoder"] == [1]
    misses = [p.as_int for svc, _, p in metrics.get("internvl.encoder.cache.misses", []) if svc == "internvl-encoder"]
    assert misses == [1]
