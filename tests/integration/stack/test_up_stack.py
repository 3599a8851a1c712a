"""`internvl-serve up` as a real process: it starts redis-server, an encoder and a decoder, answers a real image
chat through the client library, and on SIGINT stops everything (no child, grandchild or redis-server left)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc to find every child"),
]


def _up(*args: str, env: dict | None = None) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("internvl-serve")
    return subprocess.Popen(
        [str(exe), "up", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_ready(proc: subprocess.Popen, ready_file: Path, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready_file.is_file():
            return json.loads(ready_file.read_text())
        if proc.poll() is not None:
            pytest.fail(f"up exited with {proc.returncode} before it was ready:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"up was not ready after {timeout_s} s:\n{proc.communicate()[0]}")


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, grandchildren ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _scrape(url: str) -> dict[str, float]:
    """{sample name: sum over its label sets} of a Prometheus /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as reply:
        families = text_string_to_metric_families(reply.read().decode())
        totals: dict[str, float] = {}
        for sample in (s for family in families for s in family.samples):
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _openai_chat(base_url: str) -> dict:
    import urllib.request

    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.load(reply)


def test_up_serves_an_image_chat_and_stops_everything_on_sigint(tiny_model_dir, media_dir, tmp_path):
    from internvl_serve.clients import InternVLClient

    ready_file = tmp_path / "ready.json"
    proc = _up(
        "--model",
        str(tiny_model_dir),
        "--port",
        "0",
        "--encoder-port",
        "0",
        "--redis-port",
        "0",
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--log-dir",
        str(tmp_path / "logs"),
        "--ready-file",
        str(ready_file),
    )
    try:
        info = _wait_ready(proc, ready_file)
        assert Path(info["model"]) == Path(tiny_model_dir).resolve() and info["tiny_model"] is False
        assert set(info["pids"]) == {"up", "redis", "encoder", "decoder"}
        chat = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "path": str(media_dir / "view.jpg")},
                    {"type": "text", "text": "Describe this image."},
                ],
            }
        ]
        with InternVLClient(info["decoder"], encoder_target=info["encoder"], timeout=120) as client:
            first = client.generate(chat, max_new_tokens=4)
            again = client.generate(chat, max_new_tokens=4)
        assert first.usage.output_tokens >= 1 and first.usage.image_tokens > 0  # the encoder did its part
        assert first.usage.media_cache_hits == 0 and again.usage.media_cache_hits == 1  # redis is wired in
        assert again.token_ids == first.token_ids
        assert set(info["metrics"]) == {"decoder", "encoder"}  # each service's own /metrics port
        decoder_metrics, encoder_metrics = (_scrape(info["metrics"][n]) for n in ("decoder", "encoder"))
        assert decoder_metrics["gen_ai_server_time_to_first_token_seconds_count"] == 2
        assert encoder_metrics["internvl_encoder_media_total"] == 2
        assert _openai_chat(info["http"])["choices"][0]["finish_reason"] in ("stop", "length")  # the HTTP API
        redis_port = int(info["redis_url"].rsplit(":", 1)[1].split("/")[0])
        everything = _descendants(proc.pid)  # redis, encoder, decoder and the encoder's video workers
        assert set(info["pids"].values()) - {proc.pid} <= everything and len(everything) > 3

        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert [p for p in everything if _alive(p)] == []
    assert not _listening(redis_port)
    assert not ready_file.exists()
    stops = [line for line in out.splitlines() if " stopped (exit code 0)" in line]
    assert [line.split("] ")[1].split()[0] for line in stops] == ["decoder", "encoder", "redis"]  # reverse order
    assert "everything stopped" in out
    assert f"generate --target {info['decoder']} --image" in out  # the ready-to-paste client command
    assert f"decoder metrics (Prometheus)     {info['metrics']['decoder']}" in out
    assert b"decoder_stopped" in (tmp_path / "logs" / "decoder.log").read_bytes()


def test_up_fails_fast_with_the_log_tail_when_a_service_cannot_start(tiny_model_dir, tmp_path):
    # A device this machine lacks: the services exit while loading; up reports it and cleans up.
    device = "cuda:99"
    proc = _up(
        "--model",
        str(tiny_model_dir),
        "--port",
        "0",
        "--encoder-port",
        "0",
        "--redis-port",
        "0",
        "--device",
        device,
        "--log-dir",
        str(tmp_path),
        "--ready-file",
        str(tmp_path / "ready.json"),
    )
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out
    assert "exited with code" in out and "while loading; last lines of" in out
    assert "Traceback" not in out.split("internvl-serve up: error:")[0]  # up's own output stays clean
    assert not (tmp_path / "ready.json").exists()
    assert "redis stopped (exit code 0)" in out
    assert _processes_mentioning(device) == [], "a child outlived up"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_sigterm_while_the_models_load_stops_everything_and_exits_0(tiny_model_dir, tmp_path):
    proc = _up(
        "--model",
        str(tiny_model_dir),
        "--port",
        "0",
        "--encoder-port",
        "0",
        "--redis-port",
        "0",
        "--log-dir",
        str(tmp_path),
    )
    try:
        seen = []
        while not any("decoder loading on" in line for line in seen):
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(seen) + out
    assert proc.returncode == 0, out
    assert "stop asked for while starting" in out and "everything stopped" in out
    assert [p for p in children if _alive(p)] == []
