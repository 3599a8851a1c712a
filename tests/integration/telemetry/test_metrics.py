"""Metrics of a real in-process stack, read with InMemoryMetricReaders: request and error counters by method
and code, the encoder's cache hits and misses and batch sizes, the decoder's TTFT and per-token histograms
and engine gauges; nothing counted for health checks."""

from __future__ import annotations

import grpc
import pytest

from internvl_testing.media import noise_image

GENERATE = "internvl.v1.GenerationService/Generate"
ENCODE = "internvl.v1.VisionEncoderService/Encode"


def _points(reader) -> dict[str, list[tuple[dict, object]]]:
    """{metric name: [(attributes, data point)]} from one collection."""
    out: dict[str, list] = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    out.setdefault(metric.name, []).append((dict(point.attributes), point))
    return out


def _sum(points, name: str, **attrs) -> float:
    return sum(p.value for a, p in points.get(name, []) if all(a.get(k) == v for k, v in attrs.items()))


def _count(points, name: str, **attrs) -> int:
    return sum(p.count for a, p in points.get(name, []) if all(a.get(k) == v for k, v in attrs.items()))


def test_request_cache_and_latency_metrics(traced_stack, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from internvl_serve.clients import errors

    stack = traced_stack
    enc_before, dec_before = _points(stack.readers["encoder"]), _points(stack.readers["decoder"])
    image = tmp_path / "metrics.png"
    noise_image(80, 80, 201).save(image)
    chat = [
        {"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "What is it?"}]}
    ]
    for _ in range(2):  # a miss, then a hit
        stack.client.generate(chat, max_new_tokens=3, ignore_eos=True)
    with pytest.raises(errors.InvalidArgumentError):
        stack.client.generate([{"role": "user", "content": "hi"}], max_new_tokens=10**9)
    with grpc.insecure_channel(stack.decoder.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    dec, enc = _points(stack.readers["decoder"]), _points(stack.readers["encoder"])

    def grew(points, before, kind, name, **attrs):
        return kind(points, name, **attrs) - kind(before, name, **attrs)

    ok = {"rpc.method": GENERATE, "rpc.response.status_code": "OK"}
    bad = {"rpc.method": GENERATE, "rpc.response.status_code": "INVALID_ARGUMENT"}
    assert grew(dec, dec_before, _sum, "internvl.rpc.server.requests", **ok) == 2
    assert grew(dec, dec_before, _sum, "internvl.rpc.server.requests", **bad) == 1
    assert grew(dec, dec_before, _sum, "internvl.rpc.server.errors", **bad) == 1
    assert grew(dec, dec_before, _sum, "internvl.rpc.server.errors", **ok) == 0
    assert grew(dec, dec_before, _count, "rpc.server.call.duration", **ok) == 2
    assert not [a for a, _ in dec["internvl.rpc.server.requests"] if "Health" in a["rpc.method"]]
    assert grew(enc, enc_before, _sum, "internvl.rpc.server.requests", **{**ok, "rpc.method": ENCODE}) == 2

    # encoder: one miss then one hit, the miss computed in a vision batch
    assert grew(enc, enc_before, _sum, "internvl.encoder.cache.misses") == 1
    assert grew(enc, enc_before, _sum, "internvl.encoder.cache.hits") == 1
    assert grew(enc, enc_before, _sum, "internvl.encoder.cache.writes") == 1
    assert _sum(enc, "internvl.encoder.cache.errors") == 0
    assert grew(enc, enc_before, _count, "internvl.encoder.batch.tiles") == 1
    assert grew(enc, enc_before, _sum, "internvl.encoder.media", **{"internvl.media.cache_hit": True}) == 1

    # decoder: GenAI server histograms, tokens, and the engine gauges
    model = {"gen_ai.operation.name": "chat", "gen_ai.request.model": stack.decoder.server.servicer.model_name}
    assert grew(dec, dec_before, _count, "gen_ai.server.time_to_first_token", **model) == 2
    assert grew(dec, dec_before, _count, "gen_ai.server.time_per_output_token", **model) == 2
    assert (
        grew(dec, dec_before, _count, "gen_ai.server.request.duration", **model, **{"error.type": "InvalidArgument"})
        == 1
    )
    assert grew(dec, dec_before, _sum, "internvl.decoder.tokens", **{"gen_ai.token.type": "output"}) == 6
    assert grew(dec, dec_before, _count, "internvl.decoder.queue_time") == 2
    ttft = [
        p
        for a, p in dec["gen_ai.server.time_to_first_token"]
        if a["gen_ai.request.model"] == model["gen_ai.request.model"]
    ]
    assert 0 < ttft[0].sum < 60 * ttft[0].count  # seconds, not milliseconds
    engine = stack.decoder.server.engine
    assert _sum(dec, "internvl.decoder.kv_blocks.total") == engine.num_total_blocks
    assert _sum(dec, "internvl.decoder.kv_blocks.used") == engine.num_total_blocks - engine.num_free_blocks
    assert _sum(dec, "internvl.decoder.queue.depth") == 0 and _sum(dec, "internvl.decoder.running_sequences") == 0
