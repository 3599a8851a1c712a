"""The main job's command and the --model resolution a person sees."""

from __future__ import annotations

import json

from internvl_serve.cli import main as serve_main


def test_oracle_command_answers_the_model_card_chat(tiny_model_dir, media_dir, oracle, capsys):
    args = ["oracle", "--model", str(tiny_model_dir), "--image", str(media_dir / "view.jpg"), "--json"]
    assert serve_main([*args, "--max-new-tokens", "5", "Please describe the image explicitly."]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(media_dir / "view.jpg")},
                {"type": "text", "text": "Please describe the image explicitly."},
            ],
        }
    ]
    assert result["token_ids"] == oracle.generate(chat, max_new_tokens=5)[0]
    assert result["tiles"] > 1


def test_bad_model_argument_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert serve_main(["oracle", "--model", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert serve_main(["oracle", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert serve_main(["oracle", "--model", "NoSuchOrg/no-such-model-hf"]) == 2
    err = capsys.readouterr().err
    assert "could not be downloaded" in err and "Traceback" not in err
