"""A TLS or tokens file the service cannot use stops it at start with a message naming the flag and the
file, and exit code 2, before it listens (never a failure at the first handshake)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from internvl_testing.certs import make_pki


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-security")
    pki = make_pki(root / "pki")
    (root / "not.pem").write_text("this is not a certificate\n")
    (root / "short.tokens").write_text("tooshort alice\n")
    (root / "bad-tenant.tokens").write_text("0123456789abcdef0123 bad:tenant\n")
    (root / "empty.tokens").write_text("# nobody\n")
    return root, pki


def _start(command: str, tiny_model_dir, *flags: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("internvl-serve")
    argv = [str(exe), command, "--model", str(tiny_model_dir), "--port", "0", *flags]
    if command == "decoder":
        argv += ["--encoder", "127.0.0.1:1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


CASES = [
    ("encoder", lambda r, p: ["--tls-cert", str(r / "missing.pem"), "--tls-key", str(p.server_key)], "cannot read it"),
    ("encoder", lambda r, p: ["--tls-cert", str(r / "not.pem"), "--tls-key", str(p.server_key)], "not a PEM file"),
    (
        "encoder",
        lambda r, p: ["--tls-cert", str(p.server_cert), "--tls-key", str(p.other_key)],
        "the key does not match the certificate",
    ),
    ("encoder", lambda r, p: ["--tls-cert", str(p.server_cert)], "--tls-cert and --tls-key go together"),
    (
        "decoder",
        lambda r, p: [
            "--tls-cert",
            str(p.server_cert),
            "--tls-key",
            str(p.server_key),
            "--tls-client-ca",
            str(r / "x"),
        ],
        "--tls-client-ca",
    ),
    ("decoder", lambda r, p: ["--auth-tokens-file", str(r / "short.tokens")], "line 1: a token must be at least 16"),
    ("decoder", lambda r, p: ["--auth-tokens-file", str(r / "bad-tenant.tokens")], "line 1: tenant 'bad:tenant'"),
    ("encoder", lambda r, p: ["--auth-tokens-file", str(r / "empty.tokens")], "no tokens in it"),
    ("encoder", lambda r, p: ["--auth-tokens-file", str(r / "none.tokens")], "cannot read it"),
    ("decoder", lambda r, p: ["--encoder-tls-ca", str(r / "missing-ca.pem")], "--encoder-tls-ca"),
    (
        "decoder",
        lambda r, p: ["--encoder-tls-ca", str(p.ca), "--encoder-tls-cert", str(p.client_cert)],
        "--encoder-tls-cert and --encoder-tls-key go together",
    ),
]


@pytest.mark.parametrize("command,flags,message", CASES)
def test_a_bad_file_is_a_usage_error_at_start(files, tiny_model_dir, command, flags, message):
    root, pki = files
    result = _start(command, tiny_model_dir, *flags(root, pki))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert "_serving" not in result.stdout + result.stderr
