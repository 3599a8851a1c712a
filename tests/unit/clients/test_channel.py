"""Channel settings: the service config retries UNAVAILABLE (and nothing else), checked against a real
gRPC server on 127.0.0.1 whose handler fails a chosen number of times; options are what gRPC accepts."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest

from internvl_serve.clients import ChannelSettings, InternVLClient
from internvl_serve.clients import errors as e
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as gen_pb
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as enc_pb

PNG = b"\x89PNG\r\n\x1a\n-not-decoded-here"


class FlakyServer:
    """Serves Encode and GenerateStream; the first `failures` calls of each end with `code`."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        self.failures, self.code, self.calls = failures, code, {"Encode": 0, "GenerateStream": 0}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "internvl.v1.VisionEncoderService",
                    {
                        "Encode": grpc.unary_unary_rpc_method_handler(
                            self.encode, enc_pb.EncodeRequest.FromString, enc_pb.EncodeResponse.SerializeToString
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "internvl.v1.GenerationService",
                    {
                        "GenerateStream": grpc.unary_stream_rpc_method_handler(
                            self.stream,
                            gen_pb.GenerateStreamRequest.FromString,
                            gen_pb.GenerateStreamResponse.SerializeToString,
                        )
                    },
                ),
            ]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _maybe_fail(self, name, context):
        self.calls[name] += 1
        if self.calls[name] <= self.failures:
            context.abort(self.code, f"attempt {self.calls[name]} refused")

    def encode(self, request, context):
        self._maybe_fail("Encode", context)
        return enc_pb.EncodeResponse(media=[enc_pb.EncodedMedia(media_id="m1", ttl_seconds=5)], model="t")

    def stream(self, request, context):
        self._maybe_fail("GenerateStream", context)
        yield gen_pb.GenerateStreamResponse(text="a", token_ids=[1])
        yield gen_pb.GenerateStreamResponse(text="b", token_ids=[2], finish_reason=gen_pb.FINISH_REASON_STOP)


@pytest.fixture
def flaky(request):
    server = FlakyServer(*request.param)
    yield server
    server.server.stop(0)


@pytest.mark.parametrize("flaky", [(2,)], indirect=True)
def test_unavailable_is_retried_until_it_succeeds(flaky):
    with InternVLClient(f"127.0.0.1:{flaky.port}", timeout=20) as client:
        assert [m.media_id for m in client.encode(PNG)] == ["m1"]
        assert "".join(d.text for d in client.stream([{"role": "user", "content": "x"}])) == "ab"
    assert flaky.calls == {"Encode": 3, "GenerateStream": 3}


@pytest.mark.parametrize("flaky", [(10,)], indirect=True)
def test_retries_are_bounded(flaky):
    with InternVLClient(f"127.0.0.1:{flaky.port}", timeout=20) as client:
        with pytest.raises(e.UnavailableError, match="attempt 4 refused"):
            client.encode(PNG)
    assert flaky.calls["Encode"] == 4


@pytest.mark.parametrize("flaky", [(1, grpc.StatusCode.INVALID_ARGUMENT)], indirect=True)
def test_other_codes_are_not_retried(flaky):
    with InternVLClient(f"127.0.0.1:{flaky.port}") as client:
        with pytest.raises(e.InvalidArgumentError, match="attempt 1 refused"):
            client.encode(PNG)
    assert flaky.calls["Encode"] == 1


@pytest.mark.parametrize("flaky", [(1,)], indirect=True)
def test_max_attempts_one_disables_retries(flaky):
    settings = ChannelSettings(max_attempts=1)
    with InternVLClient(f"127.0.0.1:{flaky.port}", channel_settings=settings) as client:
        with pytest.raises(e.UnavailableError):
            client.encode(PNG)
    assert flaky.calls["Encode"] == 1


def test_service_config_covers_both_services_and_only_unavailable():
    config = json.loads(ChannelSettings().service_config())
    (method,) = config["methodConfig"]
    assert {n["service"] for n in method["name"]} == {
        "internvl.v1.GenerationService",
        "internvl.v1.VisionEncoderService",
    }
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= method["retryPolicy"]["maxAttempts"] <= 5
    options = dict(ChannelSettings(max_receive_bytes=123).options())
    assert options["grpc.max_receive_message_length"] == 123 and options["grpc.enable_retries"] == 1
    assert options["grpc.keepalive_time_ms"] >= 20_000, "the servers refuse pings more often than every 20 s"


def test_tls_files_become_credentials_and_bad_ones_are_clear_errors(tmp_path):
    import pytest

    from internvl_serve.clients.channel import tls_credentials

    assert tls_credentials() is None
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert tls_credentials(ca=str(tmp_path / "ca.pem")) is not None
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        tls_credentials(cert=str(tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="cannot read it"):
        tls_credentials(ca=str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ValueError, match="not a PEM file"):
        tls_credentials(ca=str(tmp_path / "junk.pem"))


def test_the_channel_balances_over_a_targets_addresses_with_health_checks():
    import json

    config = json.loads(ChannelSettings().service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}


def test_a_token_over_plaintext_to_another_host_warns(monkeypatch):
    import warnings

    from internvl_serve.clients import InternVLClient

    monkeypatch.delenv("INTERNVL_TOKEN", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        InternVLClient("decoder.example:50052", token="t" * 20).close()
        InternVLClient("127.0.0.1:50052", token="t" * 20).close()
        InternVLClient("decoder.example:50052").close()
    assert [str(w.message)[:40] for w in caught] == ["sending a token to decoder.example:50052"]
