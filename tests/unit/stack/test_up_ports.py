"""`internvl-serve up` port choice and its refusals: they come before any model is built, in well under a second."""

from __future__ import annotations

import re
import shutil
import socket

import pytest

from internvl_serve.cli import main
from internvl_serve.stack.ports import PortError, choose_port, is_free, metrics_ports_wanted


@pytest.fixture
def busy_port():
    """A port something listens on (without SO_REUSEPORT, like most servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_busy_explicit_port_is_an_error_naming_the_flag(busy_port):
    with pytest.raises(PortError, match=rf"--port {busy_port}: port {busy_port} on 127.0.0.1 is already in use"):
        choose_port("decoder", "127.0.0.1", busy_port, 50052, "--port", set())


def test_a_busy_default_port_is_replaced_by_a_free_one(busy_port):
    choice = choose_port("encoder", "127.0.0.1", None, busy_port, "--encoder-port", set())
    assert choice.replaced_default == busy_port
    assert choice.port != busy_port and is_free("127.0.0.1", choice.port)


def test_a_free_default_port_is_kept():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    choice = choose_port("redis", "127.0.0.1", None, port, "--redis-port", set())
    assert (choice.port, choice.replaced_default) == (port, None)


def test_port_zero_picks_a_free_port_not_taken_by_the_stack():
    taken = {choose_port("decoder", "127.0.0.1", 0, 50052, "--port", set()).port}
    other = choose_port("encoder", "127.0.0.1", 0, 50051, "--encoder-port", taken).port
    assert other not in taken and is_free("127.0.0.1", other)


def test_one_port_for_two_services_is_an_error():
    with pytest.raises(PortError, match="already given to another service"):
        choose_port("encoder", "127.0.0.1", 7000, 50051, "--encoder-port", {7000})


def test_an_address_that_is_not_this_machines_is_an_error():
    with pytest.raises(PortError, match="cannot listen on 192.0.2.1"):  # TEST-NET-1: never local
        choose_port("decoder", "192.0.2.1", None, 50052, "--port", set())


def test_up_with_a_busy_explicit_port_exits_2_with_one_clear_line(busy_port, capsys, tmp_path):
    code = main(["up", "--no-redis", "--port", str(busy_port), "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"internvl-serve up: error: --port {busy_port}: port {busy_port}")
    assert "already in use" in err and "Traceback" not in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing was started


def test_up_without_redis_server_says_how_to_install_it(monkeypatch, capsys):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "redis-server" else real_which(name))
    code = main(["up", "--port", "0", "--encoder-port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    for hint in (
        "redis-server is not on PATH",
        "sudo apt-get install redis-server",
        "brew install redis",
        "--no-redis",
    ):
        assert hint in err


def test_up_refuses_a_directory_that_is_no_checkpoint_before_starting_anything(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "up",
            "--no-redis",
            "--port",
            "0",
            "--encoder-port",
            "0",
            "--model",
            str(tmp_path / "empty"),
            "--log-dir",
            str(tmp_path / "logs"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("internvl-serve: error:") and "config.json" in err
    assert not (tmp_path / "logs").exists()


def test_metrics_ports_default_to_off_and_the_encoders_to_the_decoders_plus_one():
    assert metrics_ports_wanted(None, None) == []
    assert metrics_ports_wanted(9100, None) == [
        ("decoder metrics", 9100, 9100, "--metrics-port"),
        ("encoder metrics", None, 9101, "--encoder-metrics-port"),  # a default: replaced by a free port when busy
    ]
    assert [w[1] for w in metrics_ports_wanted(0, None)] == [0, 0]  # free ports for both
    assert [w[1] for w in metrics_ports_wanted(9100, 9200)] == [9100, 9200]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--encoder-metrics-port", "9200"], "--encoder-metrics-port needs --metrics-port"),
        (["--metrics-port", "70000"], r"--metrics-port must lie in \[0, 65535\], got 70000"),
        (["--metrics-port", "0", "--encoder-metrics-port", "-1"], "--encoder-metrics-port must lie in"),
    ],
)
def test_up_refuses_bad_metrics_ports_before_starting_anything(flags, message, capsys, tmp_path):
    code = main(["up", "--no-redis", "--port", "0", "--encoder-port", "0", *flags, "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_up_with_a_busy_metrics_port_exits_2_naming_the_flag(busy_port, capsys, tmp_path):
    code = main(["up", "--no-redis", "--port", "0", "--metrics-port", str(busy_port), "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"--metrics-port {busy_port}: port {busy_port} on 127.0.0.1 is already in use" in err


def test_up_takes_the_metrics_port_from_the_services_environment_variable(monkeypatch):
    from internvl_serve.cli import build_parser

    monkeypatch.setenv("INTERNVL_METRICS_PORT", "9300")
    assert build_parser().parse_args(["up"]).metrics_port == 9300
