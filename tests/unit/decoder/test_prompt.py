"""Prompt token ids equal the transformers processor's, and every malformed chat is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from internvl_serve.common.errors import InvalidArgument
from internvl_serve.decoder.engine.media import MediaEmbedding
from internvl_serve.decoder.engine.prompt import PromptBuilder
from internvl_serve.decoder.engine.sampling_params import SamplingParams
from internvl_serve.decoder.engine.sequence_factory import resolve_max_new_tokens
from internvl_serve.oracle.embeddings import media_embeddings, tile_counts


@pytest.fixture(scope="module")
def builder(tiny_model_dir):
    from transformers import AutoTokenizer

    return PromptBuilder(AutoTokenizer.from_pretrained(str(tiny_model_dir)), max_media=4)


def user(*parts):
    return {"role": "user", "content": list(parts)}


def text(t):
    return {"type": "text", "text": t}


def image(path):
    return {"type": "image", "image": str(path)}


def video(path):
    return {"type": "video", "video": str(path)}


def fake_media(oracle, chat):
    """Right counts, zero embeddings: prompt ids do not depend on the values."""
    hidden = oracle.model.config.text_config.hidden_size
    per_tile = oracle.processor.image_seq_length
    items = []
    for kind, n in zip(
        [p["type"] for m in chat if isinstance(m["content"], list) for p in m["content"] if p["type"] != "text"],
        tile_counts(oracle, chat),
    ):
        emb = torch.zeros(n * per_tile, hidden)
        items.append(MediaEmbedding.image(emb, n) if kind == "image" else MediaEmbedding.video(emb, n))
    return items


def chats(media_dir):
    return {
        "text only": [user(text("Write a haiku"))],
        "one image": [user(image(media_dir / "view.jpg"), text("Please describe the image explicitly."))],
        "several images": [
            user(
                image(media_dir / "liberty.jpg"),
                image(media_dir / "bridge.jpg"),
                text("These images depict two different landmarks. Can you identify them?"),
            )
        ],
        "video": [user(video(media_dir / "tennis.mp4"), text("What type of shot is the man performing?"))],
        "system message": [{"role": "system", "content": "You are terse."}, user(text("Hi"))],
        "multi-turn": [
            user(image(media_dir / "bridge.jpg"), text("What is this?")),
            {"role": "assistant", "content": [text("A bridge.")]},
            user(text("And this one?"), image(media_dir / "view.jpg")),
        ],
        "string content": [{"role": "user", "content": "plain string content"}],
    }


@pytest.mark.parametrize("name", list(chats(Path(".")).keys()))
def test_prompt_ids_equal_the_processor(name, builder, oracle, media_dir):
    chat = chats(media_dir)[name]
    media = fake_media(oracle, chat)
    prompt = builder.build(chat, media)
    assert prompt.token_ids == oracle.prepare(chat).prompt_ids(0)
    image_id = oracle.model.config.image_token_id
    assert prompt.media_positions == [i for i, t in enumerate(prompt.token_ids) if t == image_id]
    assert len(prompt.media_positions) == sum(m.num_tokens for m in media)


def test_media_embeddings_are_laid_out_in_chat_order(builder, oracle, media_dir):
    chat = chats(media_dir)["multi-turn"]
    media = media_embeddings(oracle, chat)
    prompt = builder.build(chat, media)
    assert torch.equal(prompt.media_embeddings, torch.cat([m.embeddings for m in media]))
    assert [m.num_tiles for m in media] == tile_counts(oracle, chat)


def test_video_lines_follow_the_processor(builder, oracle, media_dir):
    chat = chats(media_dir)["video"]
    (item,) = fake_media(oracle, chat)
    rendered = builder.render(chat, [item])
    tile = "<img>" + "<IMG_CONTEXT>" * item.tokens_per_tile + "</img>"
    assert "\n".join(f"Frame{k}: {tile}" for k in range(1, item.num_frames + 1)) in rendered


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "messages is empty"),
        (
            [{"role": "tool", "content": "x"}],
            r"messages\[0\].role is 'tool'; it must be one of system, user, assistant",
        ),
        ([{"role": "user", "content": ""}], r"messages\[0\] \(user\) has empty content"),
        ([{"role": "user", "content": []}], r"messages\[0\] \(user\) has empty content"),
        (
            [user(text("ok")), {"role": "assistant", "content": [text("")]}],
            r"messages\[1\] \(assistant\) has empty content",
        ),
        ([user({"type": "audio"})], r"content\[0\] has type 'audio'"),
        ([user(text("look: <IMG_CONTEXT>"))], "contains the media token '<IMG_CONTEXT>'"),
        ([user(text("<img>"))], "contains the media token '<img>'"),
        ([user(text("x </img>"))], "contains the media token '</img>'"),
        ([{"role": "system", "content": "<video>"}], "contains the media token '<video>'"),
    ],
)
def test_bad_chats_are_invalid_argument(builder, messages, match):
    with pytest.raises(InvalidArgument, match=match):
        builder.check(messages)


def test_more_media_than_the_limit(builder):
    chat = [user(*[{"type": "image"}] * 5, text("five"))]
    with pytest.raises(InvalidArgument, match="5 media items; at most 4"):
        builder.check(chat)


def test_prompt_longer_than_the_context():
    with pytest.raises(InvalidArgument, match="the prompt is 100 tokens .* the context holds 100 tokens"):
        resolve_max_new_tokens(0, prompt_len=100, context_len=100, default=256)


def test_max_new_tokens_past_the_context():
    with pytest.raises(
        InvalidArgument,
        match="max_new_tokens 50 plus the prompt's 60 tokens exceeds the context length 100; ask for at most 40",
    ):
        resolve_max_new_tokens(50, prompt_len=60, context_len=100, default=256)
    assert resolve_max_new_tokens(40, 60, 100, 256) == 40
    assert resolve_max_new_tokens(0, 60, 100, 256) == 40  # the default is capped by the room left
    assert resolve_max_new_tokens(0, 60, 1000, 256) == 256


@pytest.mark.parametrize(
    "params, match",
    [
        (SamplingParams(temperature=-0.1), "temperature"),
        (SamplingParams(temperature=float("nan")), "temperature"),
        (SamplingParams(top_p=1.5), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(repetition_penalty=-1.0), "repetition_penalty"),
        (SamplingParams(max_new_tokens=-1), "max_new_tokens"),
        (SamplingParams(stop=("",)), r"stop\[0\]"),
        (SamplingParams(stop=("x" * 257,)), r"stop\[0\] is 257 UTF-8 bytes"),
        (SamplingParams(stop=tuple("abcdefghijklmnopq")), "17 strings; at most 16"),
    ],
)
def test_bad_sampling_params_are_invalid_argument(params, match):
    with pytest.raises(InvalidArgument, match=match):
        params.validate()
    SamplingParams(temperature=0.5, top_p=1.0, top_k=3, seed=2**64 - 1, stop=("a",), repetition_penalty=1.1).validate()
