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
