"""internvl-client: argument parsing, the chat it builds, and one-line errors with documented exit codes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from internvl_serve.clients.cli import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    build_parser,
    conversation_from_args,
    main,
    sampling_from_args,
)
from internvl_testing.redis_server import free_port


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_generate_arguments_build_the_chat_and_sampling(monkeypatch):
    monkeypatch.delenv("INTERNVL_TARGET", raising=False)
    args = _parse(
        "generate",
        "--target",
        "h:1",
        "--image",
        "a.jpg",
        "--image",
        "https://x/b.png",
        "--video",
        "v.mp4",
        "--system",
        "Be brief.",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0.5",
        "--top-p",
        "0.9",
        "--top-k",
        "5",
        "--seed",
        "7",
        "--stop",
        "END",
        "--stop",
        "\n\n",
        "--stream",
        "--json",
        "--num-frames",
        "4",
        "--timeout",
        "9",
        "--allow-urls",
        "Describe.",
    )
    assert (args.target, args.stream, args.json, args.num_frames, args.timeout, args.allow_urls) == (
        "h:1",
        True,
        True,
        4,
        9.0,
        True,
    )
    assert conversation_from_args(args) == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image", "path": "a.jpg"},
                {"type": "image", "url": "https://x/b.png"},
                {"type": "video", "path": "v.mp4"},
                {"type": "text", "text": "Describe."},
            ],
        },
    ]
    assert sampling_from_args(args) == {
        "max_new_tokens": 8,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 7,
        "stop": ["END", "\n\n"],
    }


def test_defaults_send_only_what_was_given(monkeypatch):
    monkeypatch.delenv("INTERNVL_TARGET", raising=False)
    args = _parse("generate", "--target", "h:1", "hello")
    assert sampling_from_args(args) == {} and not args.stream and not args.json and args.timeout == 300.0
    assert conversation_from_args(args) == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]


def test_prompt_from_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("from a pipe"))
    args = _parse("generate", "--target", "h:1", "-")
    assert conversation_from_args(args)[0]["content"][-1] == {"type": "text", "text": "from a pipe"}


def test_target_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("INTERNVL_TARGET", "env-host:5")
    assert _parse("encode", "x.jpg").target == "env-host:5"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["generate", "hi"],
        ["generate", "--target", "h:1"],
        ["encode", "--target", "h:1"],
        ["generate", "--target", "h:1", "--max-new-tokens", "many", "hi"],
    ],
)
def test_usage_errors_exit_2(argv, monkeypatch, capsys):
    monkeypatch.delenv("INTERNVL_TARGET", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_USAGE and "usage:" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    for argv in (["--help"], ["generate", "--help"], ["encode", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        out = capsys.readouterr().out
        assert exit_.value.code == 0
        assert "exit codes:" in out and "3  the server cannot be reached" in out and "2  usage error" in out


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    return lines[0]


def test_connection_refused_exits_3_with_a_hint(capsys):
    target = f"127.0.0.1:{free_port()}"
    assert main(["generate", "--target", target, "--timeout", "20", "hi"]) == EXIT_UNAVAILABLE
    line = _error_line(capsys)
    assert line.startswith(f"internvl-client: error: cannot reach {target} (UNAVAILABLE): is the decoder running?")
    assert main(["generate", "--target", target, "--stream", "hi"]) == EXIT_UNAVAILABLE
    assert "is the decoder running?" in _error_line(capsys)


def test_encode_connection_refused_names_the_encoder(capsys, tmp_path):
    from internvl_testing.media import image_bytes, noise_image

    (tmp_path / "a.png").write_bytes(image_bytes(noise_image(8, 8, 1), "PNG"))
    target = f"127.0.0.1:{free_port()}"
    assert main(["encode", "--target", target, str(tmp_path / "a.png")]) == EXIT_UNAVAILABLE
    assert f"cannot reach {target} (UNAVAILABLE): is the encoder running?" in _error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "/no/such/cat.jpg"], "image file not found: /no/such/cat.jpg"),
        (["--video", "/no/such/clip.mp4"], "video file not found: /no/such/clip.mp4"),
        (["--image", "https://example.invalid/cat.jpg"], "pass allow_urls=True .*--allow-urls"),
        (["--top-p", "2"], "top_p must be between 0 and 1"),
        (["--num-frames", "-1"], "--num-frames must be >= 0"),
    ],
)
def test_bad_input_exits_2_before_contacting_the_server(extra, message, capsys):
    import re

    target = f"127.0.0.1:{free_port()}"  # nothing listens: reaching it would exit 3, not 2
    assert main(["generate", "--target", target, *extra, "hi"]) == EXIT_USAGE
    line = _error_line(capsys)
    assert line.startswith("internvl-client: error: ") and re.search(message, line), line


def test_encode_missing_file_exits_2(capsys):
    assert main(["encode", "--target", f"127.0.0.1:{free_port()}", "/no/such.png"]) == EXIT_USAGE
    assert "media file not found: /no/such.png" in _error_line(capsys)


def test_the_console_script_is_installed():
    exe = Path(sys.executable).with_name("internvl-client")
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "exit codes:" in done.stdout
