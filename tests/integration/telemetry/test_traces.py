"""One request = one trace across the client library, the decoder, the encoder and Redis, with the parents
and attributes the design names, no prompt text, and no spans for health checks or reflection."""

from __future__ import annotations

import time

import grpc
import pytest

from internvl_testing.media import noise_image
from internvl_testing.telemetry import assert_no_text, children, from_sdk, in_memory_telemetry, only, wait_for

GENERATE = "internvl.v1.GenerationService/Generate"
GENERATE_STREAM = "internvl.v1.GenerationService/GenerateStream"
ENCODE = "internvl.v1.VisionEncoderService/Encode"
SECRET = "zebra-SECRET-prompt-4711"


def _chat(image_path, text=f"Describe {SECRET} please."):
    return [{"role": "user", "content": [{"type": "image", "path": str(image_path)}, {"type": "text", "text": text}]}]


def _image(tmp_path, seed: int):
    path = tmp_path / f"img{seed}.png"
    noise_image(96, 64, seed).save(path)
    return path


def _trace_of(stack, method: str, kind: str = "CLIENT", expect: set[str] = frozenset()) -> list:
    """The spans of the (only) trace whose root is the client's `method` span, once `expect` names are in."""

    def collect():
        spans = [from_sdk(s) for s in stack.spans.get_finished_spans()]
        roots = [s for s in spans if s.name == method and s.kind == kind and s.parent_id is None]
        if len(roots) != 1:
            return None
        trace = [s for s in spans if s.trace_id == roots[0].trace_id]
        return trace if expect <= {s.name for s in trace} else None

    trace = wait_for(collect)
    assert trace, f"no complete trace: {[(s.name, s.kind) for s in map(from_sdk, stack.spans.get_finished_spans())]}"
    return trace


def test_one_trace_with_parents_and_attributes(traced_stack, tmp_path):
    stack = traced_stack
    stack.spans.clear()
    result = stack.client.generate(_chat(_image(tmp_path, 101)), max_new_tokens=4, ignore_eos=True)
    spans = _trace_of(stack, GENERATE, expect={"SET", "internvl.vision_batch"})
    client = only(spans, name=GENERATE, kind="CLIENT")
    assert {s.trace_id for s in map(from_sdk, stack.spans.get_finished_spans())} == {client.trace_id}

    server = only(spans, name=GENERATE, kind="SERVER")
    chat = only(spans, kind="INTERNAL", name=f"chat {result.model}")
    enc_client = only(spans, name=ENCODE, kind="CLIENT")
    enc_server = only(spans, name=ENCODE, kind="SERVER")
    media = only(spans, name="internvl.encode_media")
    get, put = only(spans, name="GET"), only(spans, name="SET")
    preprocess, vision = only(spans, name="internvl.preprocess"), only(spans, name="internvl.vision_encode")
    batch = only(spans, name="internvl.vision_batch")

    # parents: client -> decoder server -> chat -> encoder client -> encoder server -> media -> redis / vision
    assert client.parent_id is None and client.service == "internvl-client"
    assert (server.parent_id, server.service) == (client.span_id, "internvl-decoder")
    assert (chat.parent_id, chat.service) == (server.span_id, "internvl-decoder")
    assert (enc_client.parent_id, enc_client.service) == (chat.span_id, "internvl-decoder")
    assert (enc_server.parent_id, enc_server.service) == (enc_client.span_id, "internvl-encoder")
    assert media.parent_id == enc_server.span_id
    for span in (get, put, preprocess, vision):
        assert (span.parent_id, span.service) == (media.span_id, "internvl-encoder"), span.name
    assert batch.parent_id == vision.span_id

    # RPC attributes and status on both sides
    for span in (client, server, enc_client, enc_server):
        assert span.attributes["rpc.system.name"] == "grpc" and span.attributes["rpc.grpc.status_code"] == 0
        assert span.attributes["rpc.response.status_code"] == "OK" and span.status != "ERROR"
    assert (
        server.attributes["rpc.method"] == GENERATE
        and enc_server.attributes["rpc.service"] == "internvl.v1.VisionEncoderService"
    )

    # GenAI conventions + ours on the chat span
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == result.model
    assert a["gen_ai.request.max_tokens"] == 4 and a["gen_ai.request.temperature"] == 0.0
    assert a["gen_ai.request.stream"] is False and a["gen_ai.response.id"] == result.request_id
    assert a["gen_ai.usage.input_tokens"] == result.usage.input_tokens
    assert a["gen_ai.usage.output_tokens"] == result.usage.output_tokens == 4
    assert list(a["gen_ai.response.finish_reasons"]) == [result.finish_reason] == ["length"]
    assert a["internvl.image_tokens"] == result.usage.image_tokens > 0
    assert a["internvl.media_cache_hits"] == 0 and a["internvl.media.count"] == 1
    assert a["internvl.queue_time_s"] >= 0
    assert 0 < a["internvl.time_to_first_token_s"] < 120  # seconds (the client's timeout), not ms
    assert "gen_ai.request.top_p" not in a  # greedy: sampling knobs are not reported
    assert client.attributes["gen_ai.usage.output_tokens"] == 4  # the client library's span has the usage too

    # encoder: media, cache (Redis) and vision-batch attributes
    m = media.attributes
    assert m["internvl.media.type"] == "image" and m["internvl.media.cache_hit"] is False
    assert m["internvl.media.num_tiles"] >= 1 and m["internvl.media.num_tokens"] == result.usage.image_tokens
    assert m["internvl.single_flight"] == "leader" and m["internvl.media.stored"] is True
    assert get.kind == put.kind == "CLIENT"
    assert get.attributes["db.system.name"] == "redis" and get.attributes["db.operation.name"] == "GET"
    assert put.attributes["db.operation.name"] == "SET" and put.attributes["server.port"] == stack.redis.port
    assert get.attributes["internvl.cache.result"] == "miss" and put.attributes["internvl.cache.result"] == "stored"
    assert batch.attributes["internvl.vision.batch_tiles"] >= m["internvl.media.num_tiles"]
    assert batch.attributes["internvl.vision.batch_requests"] >= 1
    assert enc_server.attributes["internvl.media_cache_hits"] == 0

    # no prompt (or completion) text anywhere by default
    assert_no_text(spans, SECRET)
    assert not any("gen_ai.input.messages" in s.attributes or "gen_ai.output.messages" in s.attributes for s in spans)


def test_second_request_is_a_cache_hit_without_vision_work(traced_stack, tmp_path):
    stack = traced_stack
    image = _image(tmp_path, 102)
    stack.client.generate(_chat(image), max_new_tokens=2)
    stack.spans.clear()
    result = stack.client.generate(_chat(image), max_new_tokens=2)
    spans = _trace_of(stack, GENERATE, expect={"GET", ENCODE})
    assert result.usage.media_cache_hits == 1
    chat = only(spans, kind="INTERNAL", name=f"chat {result.model}")
    assert chat.attributes["internvl.media_cache_hits"] == 1
    media = only(spans, name="internvl.encode_media")
    assert media.attributes["internvl.media.cache_hit"] is True
    assert only(spans, name="GET").attributes["internvl.cache.result"] == "hit"
    assert not children(spans, media, name="SET") and not [s for s in spans if s.name.startswith("internvl.vision")]


def test_stream_is_traced_and_propagated(traced_stack, tmp_path):
    stack = traced_stack
    stack.spans.clear()
    deltas = list(stack.client.stream(_chat(_image(tmp_path, 103)), max_new_tokens=3, ignore_eos=True))
    spans = _trace_of(stack, GENERATE_STREAM, expect={ENCODE})
    client = only(spans, name=GENERATE_STREAM, kind="CLIENT")
    server = only(spans, name=GENERATE_STREAM, kind="SERVER")
    chat = only(spans, kind="INTERNAL", name=f"chat {deltas[-1].model}")
    assert server.parent_id == client.span_id and chat.parent_id == server.span_id
    assert chat.attributes["gen_ai.request.stream"] is True and chat.attributes["gen_ai.usage.output_tokens"] == 3
    assert any(name == "gen_ai.first_token" for name, _ in chat.events)
    assert only(spans, name=ENCODE, kind="SERVER").parent_id == only(spans, name=ENCODE, kind="CLIENT").span_id
    assert_no_text(spans, SECRET)


def test_prompt_text_only_when_opted_in(traced_stack, tmp_path):
    stack = traced_stack
    servicer = stack.decoder.server.servicer
    stack.spans.clear()
    servicer.capture_content = True  # what INTERNVL_TRACE_CONTENT=1 sets at start-up
    try:
        result = stack.client.generate(_chat(_image(tmp_path, 104)), max_new_tokens=2)
    finally:
        servicer.capture_content = False
    spans = _trace_of(stack, GENERATE, expect={ENCODE})
    chat = only(spans, kind="INTERNAL", name=f"chat {result.model}")
    assert SECRET in chat.attributes["gen_ai.input.messages"]
    assert '"type": "image"' in chat.attributes["gen_ai.input.messages"]
    assert result.text in chat.attributes["gen_ai.output.messages"]


def test_errors_set_status_by_code(traced_stack):
    """A client's bad input: the server span records INVALID_ARGUMENT without marking itself failed; the
    client span (every non-OK status is an error there) does."""
    from internvl_serve.clients import errors

    stack = traced_stack
    stack.spans.clear()
    with pytest.raises(errors.InvalidArgumentError):
        stack.client.generate([{"role": "user", "content": SECRET}], max_new_tokens=10**9)  # past the context
    spans = wait_for(
        lambda: (lambda got: got if len(got) == 2 else None)(
            [s for s in map(from_sdk, stack.spans.get_finished_spans()) if s.name == GENERATE]
        )
    )
    server, client = only(spans, kind="SERVER"), only(spans, kind="CLIENT")
    assert server.parent_id == client.span_id
    assert server.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT" and server.status == "UNSET"
    assert client.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT" and client.status == "ERROR"
    chat = only([from_sdk(s) for s in stack.spans.get_finished_spans()], kind="INTERNAL")
    assert chat.parent_id == server.span_id and any(name == "exception" for name, _ in chat.events)
    assert_no_text([from_sdk(s) for s in stack.spans.get_finished_spans()], SECRET)


def test_health_checks_and_reflection_make_no_spans(traced_stack):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    stack = traced_stack
    stack.spans.clear()
    for server in (stack.encoder, stack.decoder):
        with grpc.insecure_channel(server.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert ProtoReflectionDescriptorDatabase(channel).get_services()
    time.sleep(0.3)
    assert stack.spans.get_finished_spans() == ()


def test_redis_failure_is_recorded_on_its_span_and_the_request_succeeds(tiny_model_dir, tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from internvl_serve.clients import InternVLClient
    from internvl_serve.encoder.server import EncoderServer
    from internvl_testing.encoder_server import encoder_config
    from internvl_testing.redis_server import free_port
    from internvl_testing.servers import ServerThread

    exporter = InMemorySpanExporter()
    encoder_t, client_t = (
        in_memory_telemetry("internvl-encoder", exporter),
        in_memory_telemetry("internvl-client", exporter),
    )
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    # a back-off far longer than the request: the SET after the failed GET falls inside it, whatever the speed
    config = encoder_config(tiny_model_dir, dead_redis, backoff_s=600.0)
    encoder = ServerThread(lambda: EncoderServer(config, encoder_t))
    try:
        with InternVLClient(encoder.address, tracer_provider=client_t.tracer_provider, timeout=60) as client:
            encoded = client.encode([str(_image(tmp_path, 105))])
        assert encoded[0].ttl_seconds == 0  # answered, but could not be cached
        spans = wait_for(
            lambda: (
                [from_sdk(s) for s in exporter.get_finished_spans()]
                if any(s.name == ENCODE and s.kind.name == "CLIENT" for s in exporter.get_finished_spans())
                else None
            )
        )
        get = only(spans, name="GET")
        assert get.status == "ERROR" and get.attributes["internvl.cache.result"] == "error"
        assert get.attributes["error.type"] and any(name == "exception" for name, _ in get.events)
        media = only(spans, name="internvl.encode_media")
        assert get.parent_id == media.span_id and media.status != "ERROR"
        # within the back-off the store is skipped (no second timeout), and the trace says so
        skipped = [attrs for name, attrs in media.events if name == "internvl.cache.skipped"]
        assert skipped == [{"reason": "redis failed recently"}], media.events
        assert not [s for s in spans if s.name == "SET"], "the store was attempted inside the back-off"
        assert media.attributes["internvl.media.stored"] is False
        assert only(spans, name=ENCODE, kind="SERVER").attributes["rpc.response.status_code"] == "OK"
    finally:
        encoder.close()
        encoder_t.shutdown()
        client_t.shutdown()


def test_stream_left_early_ends_the_server_span_as_cancelled(traced_stack, caplog):
    stack = traced_stack
    stack.spans.clear()
    stream = stack.client.stream([{"role": "user", "content": "a long story"}], max_new_tokens=200, ignore_eos=True)
    for _ in stream:
        break  # leave after the first delta: the call is cancelled
    stream.close()
    spans = wait_for(
        lambda: (lambda got: got if len(got) == 2 else None)(
            [s for s in map(from_sdk, stack.spans.get_finished_spans()) if s.name == GENERATE_STREAM]
        ),
        20,
    )
    server, client = only(spans, kind="SERVER"), only(spans, kind="CLIENT")
    assert client.attributes["rpc.response.status_code"] == "CANCELLED"
    assert server.attributes["rpc.response.status_code"] == "CANCELLED" and server.parent_id == client.span_id
    chat = wait_for(lambda: [s for s in map(from_sdk, stack.spans.get_finished_spans()) if s.name.startswith("chat ")])
    assert chat and "gen_ai.usage.output_tokens" not in chat[0].attributes  # it never finished
    assert not [r for r in caplog.records if "detach" in r.getMessage().lower()]


def test_single_flight_follower_links_to_the_leader(traced_stack, tmp_path):
    """The same new image twice in one request: one item computes it, the other waits and links to it."""
    stack = traced_stack
    stack.spans.clear()
    image = str(_image(tmp_path, 106))
    encoded = stack.client.encode([image, image])
    assert encoded[0].media_id == encoded[1].media_id
    spans = _trace_of(stack, ENCODE, expect={"SET"})
    media = [s for s in spans if s.name == "internvl.encode_media"]
    roles = {s.attributes["internvl.single_flight"]: s for s in media}
    assert sorted(roles) == ["follower", "leader"]
    assert roles["follower"].links == [roles["leader"].span_id]
    assert [s.parent_id for s in spans if s.name in ("SET", "internvl.preprocess")] == [roles["leader"].span_id] * 2


def test_async_client_joins_the_callers_trace(traced_stack):
    """AsyncInternVLClient: its span is a child of the caller's current span, and the decoder's of its."""
    import asyncio

    from internvl_serve.clients import AsyncInternVLClient

    stack = traced_stack
    stack.spans.clear()
    provider = stack.telemetry["client"].tracer_provider

    async def call():
        async with AsyncInternVLClient(stack.decoder.address, tracer_provider=provider, timeout=60) as client:
            with provider.get_tracer("app").start_as_current_span("app.handle_request"):
                return await client.generate([{"role": "user", "content": "hi"}], max_new_tokens=2)

    asyncio.run(call())
    spans = wait_for(
        lambda: (lambda got: got if len(got) == 3 else None)(
            [s for s in map(from_sdk, stack.spans.get_finished_spans()) if s.name in (GENERATE, "app.handle_request")]
        )
    )
    app, client, server = only(spans, name="app.handle_request"), only(spans, kind="CLIENT"), only(spans, kind="SERVER")
    assert client.parent_id == app.span_id and server.parent_id == client.span_id
