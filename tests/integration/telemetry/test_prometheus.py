"""Prometheus /metrics of a real encoder and decoder (tiny checkpoint, real redis-server, both in this process,
each built from its config with metrics_port=0 and no OTEL_* settings): after image chats over gRPC, both
scrapes carry the metrics the dashboard needs, with plausible values, each service only its own; and every
metric the Grafana dashboard queries is one the services serve, so the dashboard cannot drift."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from internvl_testing.decoder_server import decoder_config, start_decoder
from internvl_testing.encoder_server import encoder_config, start_encoder
from internvl_testing.media import noise_image
from internvl_testing.prometheus_scrape import scrape
from internvl_testing.redis_server import RedisServer

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "internvl-serve-dashboard.json"
NUM_KV_BLOCKS = 64
GENERATE = "internvl.v1.GenerationService/Generate"


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def scraped(tiny_model_dir, tmp_path_factory):
    """The two services, one image chat answered twice (a cache miss, then a hit), and both scrapes."""
    from internvl_serve.clients import InternVLClient

    image = tmp_path_factory.mktemp("prometheus") / "scraped.png"
    noise_image(96, 64, 4242).save(image)
    chat = [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "What?"}]}]
    redis = RedisServer()
    encoder = start_encoder(encoder_config(tiny_model_dir, redis.url, metrics_port=0))
    decoder = None
    try:
        decoder = start_decoder(
            decoder_config(tiny_model_dir, [encoder.address], metrics_port=0, num_kv_blocks=NUM_KV_BLOCKS)
        )
        with InternVLClient(decoder.address, timeout=120) as client:
            replies = [client.generate(chat, max_new_tokens=4, ignore_eos=True) for _ in range(2)]
        ports = {"encoder": encoder.server.metrics_port, "decoder": decoder.server.metrics_port}
        yield SimpleNamespace(
            replies=replies,
            ports=ports,
            encoder=scrape(ports["encoder"]),
            decoder=scrape(ports["decoder"]),
            model=decoder.server.servicer.model_name,
        )
    finally:
        if decoder is not None:
            decoder.close()
        encoder.close()
        redis.stop()


def test_each_service_serves_its_own_metrics_on_the_port_it_picked(scraped):
    assert all(port > 0 for port in scraped.ports.values()) and len(set(scraped.ports.values())) == 2
    for name, samples in (("encoder", scraped.encoder), ("decoder", scraped.decoder)):
        assert samples["target_info"][0].labels["service_name"] == f"internvl-{name}"
        assert samples["process_resident_memory_bytes"][0].value > 0
    assert not [n for n in scraped.encoder if n.startswith(("gen_ai_", "internvl_decoder_"))]
    assert not [n for n in scraped.decoder if n.startswith("internvl_encoder_")]


def test_decoder_latency_tokens_and_engine_gauges(scraped):
    d, model = scraped.decoder, {"gen_ai_request_model": scraped.model}
    assert scraped.replies[1].usage.media_cache_hits == 1  # the second chat was a cache hit
    for histogram in ("gen_ai_server_time_to_first_token_seconds", "gen_ai_server_time_per_output_token_seconds"):
        assert total(d, f"{histogram}_count", **model) == 2
        assert 0 < total(d, f"{histogram}_sum", **model) < 60
        buckets = [s for s in d[f"{histogram}_bucket"] if s.labels["gen_ai_request_model"] == scraped.model]
        assert {s.labels["le"] for s in buckets} >= {"0.01", "1.0", "+Inf"}  # seconds, not the SDK's ms buckets
    assert total(d, "gen_ai_server_request_duration_seconds_count") == 2
    assert total(d, "internvl_decoder_tokens_total", gen_ai_token_type="output") == 8
    input_tokens = total(d, "internvl_decoder_tokens_total", gen_ai_token_type="input")
    assert input_tokens == sum(r.usage.input_tokens for r in scraped.replies)
    assert total(d, "internvl_rpc_server_requests_total", rpc_method=GENERATE, rpc_response_status_code="OK") == 2
    assert total(d, "internvl_decoder_queue_depth") == 0 and total(d, "internvl_decoder_running_sequences") == 0
    assert total(d, "internvl_decoder_kv_blocks_total") == NUM_KV_BLOCKS
    assert 0 <= total(d, "internvl_decoder_kv_blocks_used") <= NUM_KV_BLOCKS
    assert 0 < total(d, "internvl_decoder_prefix_cache_hit_rate") <= 1  # the second prompt reused the first's
    assert 0 < total(d, "internvl_decoder_prefix_cache_cached_tokens_total") < input_tokens
    assert total(d, "internvl_decoder_steps_total") >= 8


def test_encoder_images_tiles_cache_and_micro_batches(scraped):
    e = scraped.encoder
    assert total(e, "internvl_encoder_media_total", internvl_media_type="image") == 2
    assert total(e, "internvl_encoder_media_total", internvl_media_cache_hit="true") == 1
    assert total(e, "internvl_encoder_cache_misses_total") == 1 and total(e, "internvl_encoder_cache_hits_total") == 1
    assert total(e, "internvl_encoder_cache_writes_total") == 1 and total(e, "internvl_encoder_cache_errors_total") == 0
    tiles = total(e, "internvl_encoder_tiles_total")
    assert tiles >= 1 and total(e, "internvl_encoder_batch_tiles_sum") == tiles  # the miss, in one batch
    assert total(e, "internvl_encoder_batch_tiles_count") == 1 and total(e, "internvl_encoder_batch_requests_sum") == 1
    assert total(e, "internvl_encoder_batch_duration_seconds_count") == 1
    assert total(e, "internvl_encoder_batch_queue") == 0 and total(e, "internvl_encoder_inflight") == 0


_FUNCTIONS_AND_KEYWORDS = {
    *("sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile", "clamp_min"),
    *("clamp_max", "by", "without", "on", "ignoring", "and", "or", "unless", "offset", "bool", "topk", "vector"),
}


def dashboard_queries() -> list[tuple[str, list[tuple[str, list[tuple[str, str, str]]]], set[str]]]:
    """(expr, [(metric name, [(label, op, value)])], grouping labels) for every query of the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for p in [p, *p.get("panels", [])] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    found = []
    for expr in exprs:
        plain = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [$__rate_interval]
        grouping = {g.strip() for m in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", plain) for g in m.split(",")}
        plain = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", plain)
        selectors = []
        for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()", plain):
            if m.group(1) not in _FUNCTIONS_AND_KEYWORDS:
                selectors.append((m.group(1), re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(2) or "")))
        assert selectors, expr
        found.append((expr, selectors, grouping))
    return found


def test_every_metric_the_dashboard_queries_is_served(scraped):
    served = {n: scraped.encoder.get(n, []) + scraped.decoder.get(n, []) for n in {*scraped.encoder, *scraped.decoder}}
    queries = dashboard_queries()
    wanted = {
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "internvl_decoder_tokens_total",
        "internvl_decoder_queue_depth",
        "internvl_decoder_running_sequences",
        "internvl_decoder_kv_blocks_used",
        "internvl_decoder_prefix_cache_hit_rate",
        "internvl_encoder_media_total",
        "internvl_encoder_tiles_total",
        "internvl_encoder_cache_hits_total",
        "internvl_encoder_batch_tiles_bucket",
    }
    assert wanted <= {name for _, selectors, _ in queries for name, _ in selectors}  # the panels it promises
    for expr, selectors, grouping in queries:
        labels_seen = set()
        for name, matchers in selectors:
            assert name in served, f"the dashboard queries {name}, which no service serves: {expr}"
            labels = [s.labels for s in served[name]]
            labels_seen |= {k for ls in labels for k in ls}
            for label, op, value in matchers:
                assert any(label in ls for ls in labels), f"{name} has no label {label}: {expr}"
                if op == "=":
                    assert any(ls.get(label) == value for ls in labels), f'no {name}{{{label}="{value}"}}: {expr}'
        assert grouping <= labels_seen, f"grouped by labels the metrics lack, {grouping - labels_seen}: {expr}"
