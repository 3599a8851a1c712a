"""The OpenAI-compatible API shares the gRPC API's TLS and tokens: 401 without a valid token, 403 for a
tenant token acting for another tenant, /health open to probes, plaintext refused on the TLS port."""

from __future__ import annotations

import http.client
import json
import ssl

import pytest

from internvl_testing.openai_http import data_url

from .conftest import ALICE, BOB


@pytest.fixture(scope="module")
def https(secure_stack):
    context = ssl.create_default_context(cafile=str(secure_stack.pki.ca))
    port = secure_stack.decoder.server.http_port

    def request(method, path, body=None, headers=None):
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=60)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=payload, headers={"content-type": "application/json", **(headers or {})})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    return request


CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "temperature": 0}


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def test_tokens_are_required_on_the_api_but_not_on_health(https):
    assert https("GET", "/health") == (200, {"status": "serving"})
    status, body = https("POST", "/v1/chat/completions", CHAT)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert "Bearer" in body["error"]["message"]
    status, body = https("POST", "/v1/chat/completions", CHAT, bearer("not-a-valid-token-at-all"))
    assert status == 401 and "not valid" in body["error"]["message"]
    assert https("GET", "/v1/models")[0] == 401
    assert https("GET", "/v1/models", headers=bearer(ALICE))[0] == 200


def test_a_tenant_token_cannot_act_for_another_tenant(https):
    status, body = https("POST", "/v1/chat/completions", CHAT, {**bearer(ALICE), "internvl-tenant": "bob"})
    assert status == 403 and body["error"]["type"] == "permission_error"


def test_the_openai_client_over_tls_with_a_token(secure_stack, media_dir):
    import openai

    port = secure_stack.decoder.server.http_port
    verify = ssl.create_default_context(cafile=str(secure_stack.pki.ca))
    http_client = openai.DefaultHttpx2Client(verify=verify)
    base_url = f"https://localhost:{port}/v1"
    with openai.OpenAI(base_url=base_url, api_key=BOB, http_client=http_client, max_retries=0) as c:
        image = {"type": "image_url", "image_url": {"url": data_url(media_dir / "view.jpg", "image/jpeg")}}
        reply = c.chat.completions.create(
            model=secure_stack.decoder.server.servicer.model_name,
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "Describe it."}]}],
            max_tokens=4,
            temperature=0,
        )
    assert reply.usage.prompt_tokens > 0 and reply.choices[0].message.content is not None


def test_plaintext_to_the_tls_port_gets_no_answer(secure_stack):
    conn = http.client.HTTPConnection("localhost", secure_stack.decoder.server.http_port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        conn.request("GET", "/health")
        conn.getresponse()
    conn.close()
