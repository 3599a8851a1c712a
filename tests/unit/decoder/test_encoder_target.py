"""--encoder values become one gRPC target that round_robin spreads over."""

from __future__ import annotations

import pytest

from internvl_serve.decoder.service.encoder_client import service_config
from internvl_serve.decoder.service.encoder_target import encoder_target


def test_one_address_or_target_stays_one_target():
    assert encoder_target(["10.0.0.5:50051"]) == "10.0.0.5:50051"
    assert encoder_target(["encoders:50051"]) == "dns:///encoders:50051"  # re-resolved as replicas change
    assert encoder_target(["dns:///encoder.ns.svc:50051"]) == "dns:///encoder.ns.svc:50051"
    assert encoder_target(["ipv4:10.0.0.1:1,10.0.0.2:2"]) == "ipv4:10.0.0.1:1,10.0.0.2:2"


def test_a_comma_list_becomes_one_ipv4_target_with_names_resolved():
    assert encoder_target(["127.0.0.1:5001", "localhost:5002"]) == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert encoder_target(["[::1]:5001", "[::1]:5002"]) == "ipv6:[::1]:5001,[::1]:5002"


@pytest.mark.parametrize(
    "addresses,message",
    [
        ([], "at least one"),
        (["no-port"], "not HOST:PORT"),
        (["a:1", "ipv4:10.0.0.1:2"], "give it alone"),
    ],
)
def test_bad_lists_are_refused(addresses, message):
    with pytest.raises(ValueError, match=message):
        encoder_target(addresses)


def test_the_service_config_asks_grpc_for_balancing_health_and_retries():
    import json

    config = json.loads(service_config(attempts=9, backoff_s=0.1))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": "internvl.v1.VisionEncoderService"}
    (method,) = config["methodConfig"]
    assert method["waitForReady"] is True
    assert method["retryPolicy"]["maxAttempts"] == 5 and method["retryPolicy"]["retryableStatusCodes"] == [
        "UNAVAILABLE"
    ]
    assert "retryPolicy" not in json.loads(service_config(attempts=1, backoff_s=0.1))["methodConfig"][0]


def test_tls_to_an_address_list_needs_the_certificates_name():
    import asyncio

    import grpc

    from internvl_serve.decoder.service.encoder_client import EncoderClient

    async def build(**kwargs):
        client = EncoderClient(["127.0.0.1:1", "127.0.0.1:2"], credentials=grpc.ssl_channel_credentials(), **kwargs)
        await client.close()

    with pytest.raises(ValueError, match="--encoder-tls-server-name"):
        asyncio.run(build())
    asyncio.run(build(tls_server_name="encoders.internal"))


def test_a_name_that_does_not_resolve_is_a_clear_error():
    with pytest.raises(ValueError, match="does not resolve"):
        encoder_target(["127.0.0.1:1", "no-such-host.invalid:2"])


def test_the_encoder_token_never_shows_in_help_or_repr(monkeypatch, capsys):
    from internvl_serve.cli import main
    from internvl_serve.decoder.config import DecoderConfig

    secret = "s3cret-token-0123456789"
    monkeypatch.setenv("INTERNVL_ENCODER_TOKEN", secret)
    with pytest.raises(SystemExit):
        main(["decoder", "--help"])
    assert secret not in capsys.readouterr().out
    assert secret not in repr(DecoderConfig(model="m", encoder_token=secret))
