"""The HTTP API shares the decoder's lifecycle and limits: --max-in-flight counts HTTP and gRPC calls alike
(429 past it), and a drain finishes the HTTP streams it has started, answers new calls and /health 503,
then stops listening."""

from __future__ import annotations

import http.client
import json
import time

from internvl_testing.decoder_server import decoder_config, generation_stub, start_decoder
from internvl_testing.generate_requests import generate_request
from internvl_testing.openai_http import RawHttp


def _open_stream(port: int, max_tokens: int) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens, "stream": True}
    body |= {"temperature": 0, "ignore_eos": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    return response


def test_streams_in_flight_finish_and_new_calls_get_503(tiny_model_dir):
    decoder = start_decoder(decoder_config(tiny_model_dir, [], http_port=0, grace_s=30.0, drain_notice_s=0.3))
    port = decoder.server.http_port
    http = RawHttp(f"http://127.0.0.1:{port}")
    stream = _open_stream(port, 300)
    first = stream.readline()
    assert first.startswith(b"data: ")
    stopping = decoder.stop_soon(30.0)
    deadline = time.monotonic() + 10
    while not decoder.server.draining.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert decoder.server.draining.is_set()
    assert http.get("/health").status_code == 503
    late = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert late.status_code == 503 and late.json()["error"]["type"] == "service_unavailable_error"
    events = [line for line in stream.read().split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # all 300 tokens, none cut by the drain
    stopping.result(60)
    decoder.close()
    try:
        http.get("/health")
        raise AssertionError("a stopped decoder still answers HTTP")
    except ConnectionError:
        pass


def test_max_in_flight_is_shared_with_grpc_and_answers_429(tiny_model_dir):
    import grpc

    decoder = start_decoder(decoder_config(tiny_model_dir, [], http_port=0, max_in_flight=1))
    port = decoder.server.http_port
    channel, stub = generation_stub(decoder.address)
    try:
        stream = _open_stream(port, 200)  # holds the one slot until it is read to the end
        assert stream.readline().startswith(b"data: ")
        refused = RawHttp(f"http://127.0.0.1:{port}").post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        )
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        assert "--max-in-flight 1" in refused.json()["error"]["message"]
        try:
            stub.Generate(generate_request([{"role": "user", "content": "Hi"}], max_new_tokens=2), timeout=30)
            raise AssertionError("a gRPC call got past a limit the HTTP stream holds")
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        stream.read()
        ok = RawHttp(f"http://127.0.0.1:{port}").post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        )
        assert ok.status_code == 200  # the slot came back when the stream ended
    finally:
        channel.close()
        decoder.close()
