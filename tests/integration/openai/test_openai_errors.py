"""Every bad HTTP request has a defined answer: OpenAI's error JSON with the right status, before any work,
and the server still serving; media URLs are fetched only from allowed, public hosts; a client that goes
away frees its KV blocks."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from internvl_testing.openai_http import RawHttp, data_url


@pytest.fixture(scope="module")
def http(base_url):
    return RawHttp(base_url)


def chat(http, model=None, **body):
    body.setdefault("messages", [{"role": "user", "content": "Hello"}])
    body.setdefault("max_tokens", 4)
    if model is not None:
        body["model"] = model
    return http.post("/v1/chat/completions", json=body)


def assert_error(response, status, kind, fragment):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind
    assert fragment in error["message"], error["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot' is not supported"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"temperature": -1}, "temperature must be a finite number >= 0"),
        ({"n": 2}, "n must be 1"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must lie in [0, 20]"),
        ({"presence_penalty": 0.5}, "presence_penalty is not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools is not supported"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "objec"}}}}, "cannot be used"),
        ({"response_format": {"type": "yaml"}}, "response_format.type 'yaml' is not supported"),
        ({"regex": "[a-"}, "regex cannot be used"),
        ({"stop": 5}, "stop must be a string or a list"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "type 'audio' is not supported"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
            "image_url",
        ),
    ],
)
def test_bad_requests_are_400_before_any_work(http, model_name, engine, body, fragment):
    steps = engine.stats().num_steps
    assert_error(chat(http, model_name, **body), 400, "invalid_request_error", fragment)
    assert engine.stats().num_steps == steps


def test_bad_json_unknown_model_and_route(http, model_name):
    response = http.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request_error", "not valid JSON")
    assert_error(chat(http, "gpt-4o"), 404, "not_found_error", "GET /v1/models lists")
    assert http.get("/v1/nothing").status_code == 404
    assert chat(http).status_code == 200  # the model may be left out


def test_an_undecodable_image_is_400_and_the_server_keeps_serving(http, model_name):
    junk = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    content = [{"type": "image_url", "image_url": {"url": junk}}, {"type": "text", "text": "?"}]
    response = chat(http, model_name, messages=[{"role": "user", "content": content}])
    assert_error(response, 400, "invalid_request_error", "media[0]")
    assert chat(http, model_name).status_code == 200


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://example.com/cat.jpg", "--allowed-media-domains"),
        ("file:///etc/passwd", "scheme"),
        ("http://169.254.169.254/latest/meta-data", "--allowed-media-domains"),
    ],
)
def test_media_urls_outside_the_allow_list_are_never_fetched(http, model_name, url, fragment):
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    assert_error(
        chat(http, model_name, messages=[{"role": "user", "content": content}]), 400, "invalid_request_error", fragment
    )


def test_allowed_domain_that_resolves_to_loopback_is_refused(tiny_model_dir, media_dir):
    """`localhost` is allowed by name, but its addresses are not public: nothing is fetched (SSRF)."""
    from internvl_testing.decoder_server import decoder_config, start_decoder

    with socket.socket() as listener:  # a server that would answer, were it asked
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        decoder = start_decoder(decoder_config(tiny_model_dir, [], http_port=0, allowed_media_domains=("localhost",)))
        try:
            url = f"http://localhost:{port}/view.jpg"
            content = [{"type": "image_url", "image_url": {"url": url}}]
            response = chat(
                RawHttp(f"http://127.0.0.1:{decoder.server.http_port}"), messages=[{"role": "user", "content": content}]
            )
            assert_error(response, 400, "invalid_request_error", "not a public address")
            listener.settimeout(0.2)
            with pytest.raises(TimeoutError):
                listener.accept()  # no connection was ever attempted
        finally:
            decoder.close()


def test_body_over_the_limit_is_413(tiny_model_dir, media_dir):
    from internvl_testing.decoder_server import decoder_config, start_decoder

    decoder = start_decoder(
        decoder_config(tiny_model_dir, [], http_port=0, max_request_media_bytes=1024, max_receive_bytes=2048)
    )
    try:
        content = [{"type": "image_url", "image_url": {"url": data_url(media_dir / "view.jpg", "image/jpeg")}}]
        c = RawHttp(f"http://127.0.0.1:{decoder.server.http_port}")
        response = chat(c, messages=[{"role": "user", "content": content}])
        assert_error(response, 413, "invalid_request_error", "over 1024 bytes in all (--max-request-media-mb)")
        huge = [{"role": "user", "content": "x" * (2 * 2**20)}]
        assert_error(chat(c, messages=huge), 413, "invalid_request_error", "--max-request-media-mb")
        assert chat(c).status_code == 200
    finally:
        decoder.close()


def test_a_client_that_disconnects_frees_its_kv_blocks(base_url, model_name, engine):
    for stream in (False, True):
        body = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 400}
        body |= {"stream": stream, "temperature": 0}
        payload = json.dumps(body).encode()
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            deadline = time.monotonic() + 10
            while engine.stats().num_running == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert engine.stats().num_running == 1
        # the socket is closed: the engine fixture checks that every block is free again
        deadline = time.monotonic() + 10
        while engine.stats().num_running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats().num_running == 0


def test_media_parts_are_counted_and_budgeted_before_they_are_all_fetched(tiny_model_dir, media_dir):
    from internvl_testing.decoder_server import decoder_config, start_decoder

    image = {"type": "image_url", "image_url": {"url": data_url(media_dir / "view.jpg", "image/jpeg")}}
    size = (media_dir / "view.jpg").stat().st_size
    decoder = start_decoder(
        decoder_config(
            tiny_model_dir, [], http_port=0, max_media_per_request=3, max_request_media_bytes=int(size * 2.5)
        )
    )
    try:
        c = RawHttp(f"http://127.0.0.1:{decoder.server.http_port}")
        many = chat(c, messages=[{"role": "user", "content": [image] * 4}])
        assert_error(many, 400, "invalid_request_error", "4 image/video parts; at most 3")
        over = chat(c, messages=[{"role": "user", "content": [image] * 3}])  # each fits, all three do not
        assert_error(over, 413, "invalid_request_error", "--max-request-media-mb")
    finally:
        decoder.close()
