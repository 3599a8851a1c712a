"""generate() and stream() against a real decoder: greedy answers equal the transformers oracle for every
model-card shape, a batch comes back in order, a stream concatenates to the unary answer, media ids from
encode() stand in for bytes, and errors are typed. Needs the `decoder_address` fixture (conftest.py):
skipped until the decoder service exists."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from internvl_serve.clients import AsyncInternVLClient, InternVLClient
from internvl_serve.clients import errors as e
from internvl_serve.clients.cli import EXIT_OK, main
from internvl_serve.clients.media import frames_to_mp4
from internvl_testing.media import alpha_image, noise_image

N = 8  # new tokens per answer


@pytest.fixture(scope="module")
def client(decoder_address, encoder):
    with InternVLClient(decoder_address, encoder_target=encoder.address, timeout=300) as c:
        yield c


def _chat(*parts):
    return [{"role": "user", "content": [*parts]}]


def _text(t):
    return {"type": "text", "text": t}


@pytest.fixture(scope="module")
def card_chats(media_dir):
    """The model card's chats, with local files for its urls."""
    return {
        "text": _chat(_text("Write a haiku")),
        "image": _chat(
            {"type": "image", "url": str(media_dir / "view.jpg")}, _text("Please describe the image explicitly.")
        ),
        "images": _chat(
            {"type": "image", "path": str(media_dir / "liberty.jpg")},
            {"type": "image", "image": str(media_dir / "bridge.jpg")},
            _text("These images depict two different landmarks. Can you identify them?"),
        ),
        "video": _chat(
            {"type": "video", "path": str(media_dir / "tennis.mp4")}, _text("What type of shot is the man performing?")
        ),
    }


def _assert_matches_oracle(result, chat, oracle, n=N):
    expected = oracle.generate(chat, max_new_tokens=n)[0]
    assert result.token_ids == expected
    assert result.text == oracle.decode(expected)
    assert result.finish_reason == ("length" if len(expected) == n else "stop")
    assert result.usage.output_tokens == len(expected) and result.usage.input_tokens > result.usage.image_tokens


@pytest.mark.parametrize("name", ["text", "image", "images", "video"])
def test_greedy_answers_equal_the_oracle(client, oracle, card_chats, name):
    result = client.generate(card_chats[name], max_new_tokens=N)
    _assert_matches_oracle(result, card_chats[name], oracle)
    assert (result.usage.image_tokens > 0) == (name != "text")
    assert result.request_id and result.model


def test_mixed_batch_comes_back_in_order(client, oracle, card_chats):
    batch = [card_chats["images"], card_chats["video"], card_chats["image"], card_chats["text"]]
    results = client.generate(batch, max_new_tokens=N, request_id="batch")
    assert [r.request_id for r in results] == [f"batch-{i}" for i in range(4)]
    for result, chat in zip(results, batch):
        _assert_matches_oracle(result, chat, oracle)

    async def go():
        async with AsyncInternVLClient(client.target) as aclient:
            return await aclient.generate(batch, max_new_tokens=N)

    assert [r.token_ids for r in asyncio.run(go())] == [r.token_ids for r in results]


def test_stream_concatenates_to_the_unary_answer(client, card_chats):
    chat = card_chats["image"]
    whole = client.generate(chat, max_new_tokens=N)
    deltas = list(client.stream(chat, max_new_tokens=N))
    assert "".join(d.text for d in deltas) == whole.text
    assert [t for d in deltas for t in d.token_ids] == whole.token_ids
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert deltas[-1].finish_reason == whole.finish_reason and deltas[-1].usage == whole.usage

    async def go():
        async with AsyncInternVLClient(client.target) as aclient:
            return [d async for d in aclient.stream(chat, max_new_tokens=N)]

    assert "".join(d.text for d in asyncio.run(go())) == whole.text


def test_length_limit_and_ignore_eos(client, card_chats):
    result = client.generate(card_chats["text"], max_new_tokens=5, ignore_eos=True)
    assert len(result.token_ids) == 5 and result.finish_reason == "length" and result.usage.output_tokens == 5


def test_media_ids_from_encode_stand_in_for_the_bytes(client, card_chats, media_dir):
    by_bytes = client.generate(card_chats["image"], max_new_tokens=N)
    (encoded,) = client.encode(media_dir / "view.jpg")
    assert encoded.reusable
    chat = _chat({"type": "image", "media_id": encoded.media_id}, _text("Please describe the image explicitly."))
    by_id = client.generate(chat, max_new_tokens=N)
    assert by_id.token_ids == by_bytes.token_ids and by_id.usage.media_cache_hits >= 1
    assert (
        client.generate(
            _chat({"type": "image", "media_id": encoded}, card_chats["image"][0]["content"][1]), max_new_tokens=N
        ).token_ids
        == by_bytes.token_ids
    )


def test_pixels_given_as_pil_and_numpy_frames_match_the_oracle(client, oracle):
    rgba = alpha_image(90, 70, 5)
    chat = _chat({"type": "image", "image": rgba}, _text("What is this?"))
    _assert_matches_oracle(client.generate(chat, max_new_tokens=N), chat, oracle)
    frames = np.stack([np.asarray(noise_image(64, 48, s)) for s in range(10)])
    sent = client.generate(_chat({"type": "video", "video": frames}, _text("What happens?")), max_new_tokens=N)
    as_file = _chat({"type": "video", "video": frames_to_mp4(frames)}, _text("What happens?"))
    _assert_matches_oracle(sent, as_file, oracle)


def test_server_errors_are_typed(client, media_dir):
    (real,) = client.encode(media_dir / "bridge.jpg")
    unknown = real.media_id.rsplit("-", 1)[0] + "-" + "0" * 64
    with pytest.raises(e.NotFoundError):
        client.generate(_chat({"type": "image", "media_id": unknown}, _text("?")), max_new_tokens=2)
    with pytest.raises(e.InvalidArgumentError):
        client.generate(_chat(_text("look: <IMG_CONTEXT>")), max_new_tokens=2)
    with pytest.raises(e.InvalidArgumentError):
        client.generate(_chat({"type": "image", "image": b"not an image"}, _text("?")), max_new_tokens=2)
    with pytest.raises(e.InvalidArgumentError):
        list(client.stream(_chat(_text("look: <img>")), max_new_tokens=2))


def test_cli_generate_plain_json_and_stream(client, decoder_address, media_dir, capsys):
    image = str(media_dir / "view.jpg")
    prompt = "Please describe the image explicitly."
    expected = client.generate(_chat({"type": "image", "path": image}, _text(prompt)), max_new_tokens=N)
    base = ["generate", "--target", decoder_address, "--image", image, "--max-new-tokens", str(N)]
    assert main([*base, prompt]) == EXIT_OK
    assert capsys.readouterr().out == expected.text + "\n"
    assert main([*base, "--json", prompt]) == EXIT_OK
    row = json.loads(capsys.readouterr().out)
    assert (row["text"], row["token_ids"], row["finish_reason"]) == (
        expected.text,
        expected.token_ids,
        expected.finish_reason,
    )
    assert row["usage"]["output_tokens"] == len(expected.token_ids)
    assert main([*base, "--stream", prompt]) == EXIT_OK
    assert capsys.readouterr().out == expected.text + "\n"
    assert main([*base, "--stream", "--json", prompt]) == EXIT_OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "".join(d["text"] for d in lines) == expected.text
    assert lines[-1]["finish_reason"] == expected.finish_reason and lines[-1]["usage"]["output_tokens"] == len(
        expected.token_ids
    )
