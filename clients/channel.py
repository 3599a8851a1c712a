"""gRPC channel settings of the client: message sizes, keepalive, reconnects and retry on UNAVAILABLE."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

MiB = 1024 * 1024

GENERATION_SERVICE = "internvl.v1.GenerationService"
ENCODER_SERVICE = "internvl.v1.VisionEncoderService"


@dataclass(frozen=True)
class ChannelSettings:
    """What the channels of one client are built with. The defaults suit the servers' defaults."""

    # Largest request the client sends. The servers accept 512 MiB; failing here is cheaper than
    # uploading a huge request only to get RESOURCE_EXHAUSTED back.
    max_send_bytes: int = 512 * MiB
    # Largest reply accepted. Generate replies are small; Encode replies are small unless embeddings are
    # requested (InternVL3-14B: 2.5 MiB per tile in bf16, ~33 MiB per image).
    max_receive_bytes: int = 64 * MiB
    # Attempts per call (the first included) while the server answers UNAVAILABLE; 1 disables retries.
    max_attempts: int = 4
    # Keepalive ping interval; the servers allow pings every 20 s or more, with or without calls.
    keepalive_s: float = 30.0

    def service_config(self) -> str:
        """The gRPC service config (JSON): round_robin with health checking over the target's addresses,
        and retry UNAVAILABLE (server unreachable, not ready or draining)
        with exponential backoff. Nothing else is retried: INVALID_ARGUMENT would fail again,
        RESOURCE_EXHAUSTED needs a slower caller, and a deadline that passed has passed. A stream is only
        retried before its first response arrives, so no text is ever delivered twice."""
        method_config = {
            "name": [{"service": GENERATION_SERVICE}, {"service": ENCODER_SERVICE}],
            # Fail fast when the server is down instead of queueing until the deadline.
            "waitForReady": False,
        }
        if self.max_attempts > 1:
            method_config["retryPolicy"] = {
                "maxAttempts": min(self.max_attempts, 5),  # gRPC caps this at 5
                "initialBackoff": "0.2s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return json.dumps(
            {
                # A target with several addresses (several decoders): spread calls over them, and leave out
                # any whose grpc.health.v1 says NOT_SERVING (loading, or draining before a restart).
                "loadBalancingConfig": [{"round_robin": {}}],
                "healthCheckConfig": {"serviceName": ""},
                "methodConfig": [method_config],
            }
        )

    def options(self) -> list[tuple[str, int | str]]:
        keepalive_ms = int(self.keepalive_s * 1000)
        return [
            # See the fields above: what we send and accept.
            ("grpc.max_send_message_length", self.max_send_bytes),
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            # Retry policy (above) and the switch that lets gRPC apply it.
            ("grpc.service_config", self.service_config()),
            ("grpc.enable_retries", 1 if self.max_attempts > 1 else 0),
            # A request is kept in memory for a retry only up to this size; media requests are large, so
            # raise it from the 256 KiB default (a larger request is sent once, without retries).
            ("grpc.per_rpc_retry_buffer_size", 64 * MiB),
            # Notice a dead connection (a server that vanished, a NAT that dropped us) while idle or while
            # waiting for a long reply, rather than hanging until the deadline.
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Reconnect quickly after a server restart (gRPC's default starts at 1 s and grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]


def tls_credentials(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials | None:
    """TLS from PEM files: `ca` verifies the server (None with a cert: the system roots), `cert`/`key` are
    this client's certificate for mutual TLS. None when no file is named (plaintext)."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ValueError("tls_cert and tls_key go together (give both, or neither)")

    def read(what: str, path: str | None) -> bytes | None:
        if not path:
            return None
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
        if b"-----BEGIN " not in data:
            raise ValueError(f"{what} {path}: not a PEM file")
        return data

    return grpc.ssl_channel_credentials(
        root_certificates=read("tls_ca", ca), private_key=read("tls_key", key), certificate_chain=read("tls_cert", cert)
    )


def sync_channel(
    target: str, settings: ChannelSettings, credentials: grpc.ChannelCredentials | None = None
) -> grpc.Channel:
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=settings.options())
    return grpc.insecure_channel(target, options=settings.options())


def aio_channel(
    target: str, settings: ChannelSettings, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=settings.options())
    return grpc.aio.insecure_channel(target, options=settings.options())
