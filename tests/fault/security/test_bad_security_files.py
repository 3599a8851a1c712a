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


def _argv(command: str, tiny_model_dir, *flags: str) -> list[str]:
    argv = [command, "--model", str(tiny_model_dir), "--port", "0", *flags]
    return argv + (["--encoder", "127.0.0.1:1"] if command == "decoder" else [])


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
        "encoder",
        lambda r, p: ["--tls-cert", str(p.server_cert), "--tls-key", str(p.encrypted_key)],
        "the key is encrypted",
    ),
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
def test_a_bad_file_is_a_usage_error_at_start(files, tiny_model_dir, command, flags, message, capsys, monkeypatch):
    """In-process (the command's own code path, minus the process start-up)."""
    from internvl_serve.cli import main

    monkeypatch.setattr("internvl_serve.common.logs.setup_logging", lambda level: None)  # keep pytest's handlers
    root, pki = files
    with pytest.raises(SystemExit) as exit_:
        main(_argv(command, tiny_model_dir, *flags(root, pki)))
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err[-2000:]
    assert message in err, err[-2000:]
    assert "_serving" not in out + err


def test_the_process_exits_2_before_it_listens(files, tiny_model_dir):
    root, pki = files
    exe = Path(sys.executable).with_name("internvl-serve")
    argv = [
        str(exe),
        *_argv("encoder", tiny_model_dir, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.other_key)),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "the key does not match the certificate" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "encoder_serving" not in result.stdout
