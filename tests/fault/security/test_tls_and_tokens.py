"""TLS, mutual TLS and bearer tokens on the real servers: who gets in, with which code, and what the
probes and traces see."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internvl_serve.clients import InternVLClient, UnauthenticatedError, UnavailableError
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as enc_grpc
from internvl_testing.encode_requests import image, request
from internvl_testing.media import image_bytes, noise_image

from .conftest import ALICE, BOB, DECODER

HI = [{"role": "user", "content": "Hi"}]


def _client(stack, token=ALICE, **kwargs) -> InternVLClient:
    options = {"tls_ca": str(stack.pki.ca), "token": token, "timeout": 60, **kwargs}
    return InternVLClient(f"localhost:{stack.decoder.port}", **options)


def test_a_tenant_token_over_tls_gets_an_answer(secure_stack):
    with _client(secure_stack) as client:
        assert client.generate(HI, max_new_tokens=3).usage.output_tokens == 3


@pytest.mark.parametrize("token", [None, "", "not-a-token-anyone-issued"])
def test_no_token_or_an_unknown_one_is_unauthenticated(secure_stack, token, monkeypatch):
    monkeypatch.delenv("INTERNVL_TOKEN", raising=False)
    with _client(secure_stack, token=token) as client, pytest.raises(UnauthenticatedError):
        client.generate(HI, max_new_tokens=1)


def test_the_token_comes_from_the_environment(secure_stack, monkeypatch):
    monkeypatch.setenv("INTERNVL_TOKEN", BOB)
    with InternVLClient(f"localhost:{secure_stack.decoder.port}", tls_ca=str(secure_stack.pki.ca)) as client:
        assert client.generate(HI, max_new_tokens=1).usage.output_tokens == 1


def test_a_plaintext_client_cannot_talk_to_a_tls_server(secure_stack):
    with InternVLClient(f"localhost:{secure_stack.decoder.port}", token=ALICE, timeout=5) as client:
        with pytest.raises(UnavailableError):
            client.generate(HI, max_new_tokens=1)


def test_a_server_certificate_from_another_ca_is_refused(secure_stack):
    with _client(secure_stack, tls_ca=str(secure_stack.pki.other_ca), timeout=5) as client:
        with pytest.raises(UnavailableError):
            client.generate(HI, max_new_tokens=1)


def _encoder_channel(stack, with_client_cert: bool) -> grpc.Channel:
    pki = stack.pki
    pair = {"private_key": pki.client_key.read_bytes(), "certificate_chain": pki.client_cert.read_bytes()}
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes(), **(pair if with_client_cert else {}))
    return grpc.secure_channel(f"localhost:{stack.encoder.port}", credentials)


def test_mutual_tls_refuses_a_client_without_a_certificate(secure_stack):
    png = image_bytes(noise_image(30, 30, 1), "PNG")
    metadata = (("authorization", f"Bearer {ALICE}"),)
    with _encoder_channel(secure_stack, with_client_cert=False) as channel:
        with pytest.raises(grpc.RpcError) as err:
            enc_grpc.VisionEncoderServiceStub(channel).Encode(request(image(png)), metadata=metadata, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with _encoder_channel(secure_stack, with_client_cert=True) as channel:
        reply = enc_grpc.VisionEncoderServiceStub(channel).Encode(request(image(png)), metadata=metadata, timeout=30)
        assert reply.media[0].num_tokens > 0


def test_health_and_reflection_answer_without_a_token_still_under_tls(secure_stack):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    credentials = grpc.ssl_channel_credentials(secure_stack.pki.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{secure_stack.decoder.port}", credentials) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert "internvl.v1.GenerationService" in ProtoReflectionDescriptorDatabase(channel).get_services()
    with _encoder_channel(secure_stack, with_client_cert=True) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_the_tenant_is_on_the_spans_and_no_token_is_anywhere(secure_stack, caplog):
    secure_stack.spans.clear()
    with _client(secure_stack, token=BOB) as client:
        client.generate([{"role": "user", "content": "Hello there"}], max_new_tokens=2)
    with _client(secure_stack, token="wrong-token-0123456789") as client, pytest.raises(UnauthenticatedError):
        client.generate(HI, max_new_tokens=1)
    spans = secure_stack.spans.get_finished_spans()
    tenants = {s.attributes.get("internvl.tenant") for s in spans} - {None}
    assert tenants == {"bob"}
    text = " ".join(str(dict(s.attributes)) + str([e.attributes for e in s.events]) for s in spans)
    text += caplog.text
    for token in (ALICE, BOB, DECODER, "wrong-token-0123456789"):
        assert token not in text


def test_the_cli_takes_tls_and_a_token(secure_stack, capsys, monkeypatch):
    from internvl_serve.clients.cli import EXIT_OK, EXIT_USAGE, main

    monkeypatch.delenv("INTERNVL_TOKEN", raising=False)
    target = ["--target", f"localhost:{secure_stack.decoder.port}", "--tls-ca", str(secure_stack.pki.ca)]
    assert main(["generate", *target, "--token", ALICE, "--max-new-tokens", "2", "Hi"]) == EXIT_OK
    assert main(["generate", *target, "--max-new-tokens", "2", "Hi"]) == EXIT_USAGE
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("INTERNVL_TOKEN", BOB)
    assert main(["generate", *target, "--max-new-tokens", "2", "Hi"]) == EXIT_OK
