"""The Node.js client (clients/node) against a real stack: the `decoder_address` decoder (conftest.py) over the
`encoder` fixture, both on the tiny checkpoint. Runs `node --test test/` there with INTERNVL_TARGET set, plus the
Python client's answers to the same requests (INTERNVL_EXPECTED), so both languages must get the same tokens, and
a second decoder with mutual TLS and bearer tokens (INTERNVL_TLS_*) for the client's credentials.

Needs `node` and `npm ci` in clients/node. Without them the test skips, except under CI or INTERNVL_REQUIRE_NODE=1
(scripts/test.sh sets it when node is on PATH), where it fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from internvl_serve.clients import InternVLClient

NODE_DIR = Path(__file__).resolve().parents[3] / "clients" / "node"
N = 8  # new tokens per answer; the same as in clients/node/test/client.test.js
TOKEN = "node-client-token-0123456789abcdef"
PROMPTS = {"text": "Write a haiku", "image": "Please describe the image."}  # likewise


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, checked before the stack starts (listed before `decoder_address`)."""
    node = shutil.which("node")
    missing = "node is not on PATH" if node is None else None
    if missing is None and not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing = f"{NODE_DIR / 'node_modules'} is missing"
    if missing:
        if os.environ.get("CI") or os.environ.get("INTERNVL_REQUIRE_NODE") == "1":
            pytest.fail(f"the Node.js client test is required here (CI / INTERNVL_REQUIRE_NODE=1), but {missing}")
        pytest.skip(f"{missing} (install Node.js >= 18, then: cd clients/node && npm ci)")
    return node


@pytest.fixture(scope="module")
def secure_decoder(node, tiny_model_dir, encoder, tmp_path_factory):
    """A decoder over the same encoder that wants mutual TLS and a token: the INTERNVL_TLS_* variables."""
    from internvl_serve.common.tls import ServerTls
    from internvl_testing.certs import make_pki
    from internvl_testing.decoder_server import decoder_config, start_decoder

    root = tmp_path_factory.mktemp("node-tls")
    pki = make_pki(root)
    (root / "tokens").write_text(f"{TOKEN} node\n")
    tls = ServerTls(cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca))
    config = decoder_config(
        tiny_model_dir, [encoder.address], device="cpu", dtype="float32", tls=tls, auth_tokens_file=str(root / "tokens")
    )
    thread = start_decoder(config)
    yield {
        "INTERNVL_TLS_TARGET": f"localhost:{thread.port}",
        "INTERNVL_TLS_CA": str(pki.ca),
        "INTERNVL_TLS_CERT": str(pki.client_cert),
        "INTERNVL_TLS_KEY": str(pki.client_key),
        "INTERNVL_TLS_TOKEN": TOKEN,
    }
    thread.close()


def _python_answers(address: str, image: Path) -> dict:
    chats = {
        "text": [{"role": "user", "content": [{"type": "text", "text": PROMPTS["text"]}]}],
        "image": [
            {
                "role": "user",
                "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": PROMPTS["image"]}],
            }
        ],
    }
    with InternVLClient(address, timeout=120) as client:
        results = {name: client.generate(chat, max_new_tokens=N) for name, chat in chats.items()}
    return {name: {"token_ids": r.token_ids, "text": r.text} for name, r in results.items()}


def test_node_client_passes_against_a_real_stack(node, decoder_address, secure_decoder, media_dir, tmp_path):
    image = media_dir / "view.jpg"
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(_python_answers(decoder_address, image)))
    env = {
        **os.environ,
        "INTERNVL_TARGET": decoder_address,
        "INTERNVL_TEST_IMAGE": str(image),
        "INTERNVL_TEST_VIDEO": str(media_dir / "tennis.mp4"),
        "INTERNVL_EXPECTED": str(expected),
        **secure_decoder,
        "NO_COLOR": "1",
    }
    command = [node, "--test", "--test-reporter=tap", "test/"]
    try:
        result = subprocess.run(command, cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{' '.join(command)} ran over {err.timeout} s; output so far:\n{err.stdout}\n{err.stderr}")
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{output}"
    counts = {key: int(value) for key, value in re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", output, re.M)}
    assert counts.get("fail") == 0 and counts.get("cancelled") == 0, output
    # Nothing skipped: a skipped suite counts as a passing "ok ... # SKIP" line in TAP, so look for those too.
    assert counts.get("skipped") == 0 and "# SKIP" not in output, output
    assert counts.get("pass", 0) >= 10, output
