"""TLS material for both services and the decoder's link to its encoders, read and checked at start.

A missing or unreadable file, a certificate that is not PEM, or a key that does not match its certificate
stops the service before it listens (a usage error, exit 2), never at the first handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from internvl_serve.common.config_fields import setting


@dataclass(frozen=True)
class ServerTls:
    """The service's own TLS (--tls-cert/--tls-key; --tls-client-ca for mutual TLS)."""

    cert: str | None = setting(
        None, "PEM certificate chain: serve over TLS", flag="--tls-cert", env="INTERNVL_TLS_CERT"
    )
    key: str | None = setting(None, "PEM private key of --tls-cert", flag="--tls-key", env="INTERNVL_TLS_KEY")
    client_ca: str | None = setting(
        None,
        "PEM CA bundle: require client certificates signed by it (mutual TLS)",
        flag="--tls-client-ca",
        env="INTERNVL_TLS_CLIENT_CA",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    def problems(self) -> list[str]:
        if bool(self.cert) != bool(self.key):
            return ["--tls-cert and --tls-key go together (give both, or neither)"]
        if self.client_ca and not self.cert:
            return ["--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key"]
        return []

    def credentials(self) -> grpc.ServerCredentials:
        """Read and check the files (ValueError naming the flag), then gRPC's server credentials."""
        cert, key = read_pem("--tls-cert", self.cert), read_pem("--tls-key", self.key)
        check_key_pair("--tls-cert", self.cert, "--tls-key", self.key)
        ca = read_pem("--tls-client-ca", self.client_ca) if self.client_ca else None
        if ca is not None:
            check_ca("--tls-client-ca", self.client_ca)
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class EncoderLinkTls:
    """The decoder's TLS to its encoders: --encoder-tls-ca (server verification), and a client
    certificate for mutual TLS (--encoder-tls-cert/--encoder-tls-key)."""

    ca: str | None = setting(
        None, "PEM CA bundle that signed the encoders' certificates: talk TLS to them", flag="--encoder-tls-ca"
    )
    cert: str | None = setting(None, "PEM client certificate for the encoders' mutual TLS", flag="--encoder-tls-cert")
    key: str | None = setting(None, "PEM private key of --encoder-tls-cert", flag="--encoder-tls-key")
    server_name: str | None = setting(
        None,
        "the name the encoders' certificates carry, when --encoder is an address list (no host name to check)",
        flag="--encoder-tls-server-name",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert)

    def problems(self) -> list[str]:
        if bool(self.cert) != bool(self.key):
            return ["--encoder-tls-cert and --encoder-tls-key go together (give both, or neither)"]
        return []

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Read and check the files (ValueError naming the flag); None without TLS. The cert/key pairing
        itself was checked with the config (problems)."""
        if not self.enabled:
            return None
        root = None
        if self.ca:
            root = read_pem("--encoder-tls-ca", self.ca)
            check_ca("--encoder-tls-ca", self.ca)
        key = cert = None
        if self.cert:
            check_key_pair("--encoder-tls-cert", self.cert, "--encoder-tls-key", self.key)
            key, cert = read_pem("--encoder-tls-key", self.key), read_pem("--encoder-tls-cert", self.cert)
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


def read_pem(flag: str, path: str | None) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def check_key_pair(cert_flag: str, cert: str, key_flag: str, key: str) -> None:
    """The key must be the certificate's (ssl checks that it signs for the certificate's public key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else str(exc)
        if b"ENCRYPTED" in read_pem(key_flag, key):
            reason = "the key is encrypted; give an unencrypted PEM key (keep the file mode 0600)"
        raise ValueError(f"{cert_flag} {cert} / {key_flag} {key}: {reason}") from None
    except OSError as exc:
        raise ValueError(f"{cert_flag} {cert} / {key_flag} {key}: cannot read them ({exc})") from None


def _no_password() -> bytes:
    """An encrypted key would make OpenSSL prompt on the terminal; fail instead (gRPC cannot decrypt it)."""
    return b""


def check_ca(flag: str, path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{flag} {path}: not a usable CA bundle ({exc})") from None
