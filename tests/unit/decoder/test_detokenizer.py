"""Incremental detokenization: deltas never split a UTF-8 character, concatenate to the full decode, and
stop strings cut the text without ever being emitted."""

from __future__ import annotations

import pytest

from internvl_serve.decoder.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def stream(tokenizer, ids, stop=()):
    detok = IncrementalDetokenizer(tokenizer, tuple(stop))
    deltas = []
    for i in ids:
        deltas.append(detok.add(i))
        if detok.stopped_on is not None:
            break
    deltas.append(detok.finish())
    return deltas, detok


TEXTS = ["é😀 日本語 ok", "naïve café — ½ ∑ 🚀🚀", "plain ascii text", "中文字符和表情😀混合"]


@pytest.mark.parametrize("text", TEXTS)
def test_multibyte_characters_are_never_split(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids) or text.isascii()  # bytes do straddle tokens
    deltas, _ = stream(tokenizer, ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_are_skipped_and_a_dangling_byte_is_flushed(tokenizer):
    ids = tokenizer("ok 😀")["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    full = ids[:-1] + [im_end]  # ends inside the emoji: the full decode has U+FFFD there
    deltas, _ = stream(tokenizer, full)
    assert "".join(deltas) == tokenizer.decode(full, skip_special_tokens=True)
    assert "\ufffd" not in "".join(deltas[:-1])  # only the final flush may carry it


def test_random_token_sequences_concatenate_to_the_full_decode(tokenizer):
    import random

    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(tokenizer)) for _ in range(30)]
        deltas, _ = stream(tokenizer, ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_spanning_tokens_cuts_the_text_and_is_not_emitted(tokenizer):
    ids = tokenizer("Hello world, stop here and more")["input_ids"]
    deltas, detok = stream(tokenizer, ids, stop=["lo wor"])  # spans the tokens 'l', 'o', ' w', 'or'
    assert detok.stopped_on == "lo wor"
    assert "".join(deltas) == "Hel"
    assert all("lo wor" not in d for d in deltas)


def test_held_back_prefix_is_released_when_it_does_not_become_a_stop(tokenizer):
    ids = tokenizer("Hello world")["input_ids"]
    deltas, detok = stream(tokenizer, ids, stop=["world!"])
    assert detok.stopped_on is None
    assert "".join(deltas) == "Hello world"
    assert not "".join(deltas[:-1]).endswith("world")  # held back until finish: it could still become "world!"


def test_earliest_of_several_stop_strings_wins(tokenizer):
    ids = tokenizer("one two three four")["input_ids"]
    deltas, detok = stream(tokenizer, ids, stop=["four", "two", "three"])
    assert detok.stopped_on == "two" and "".join(deltas) == "one "


def test_stop_string_inside_multibyte_text(tokenizer):
    ids = tokenizer("日本語の文章です")["input_ids"]
    deltas, detok = stream(tokenizer, ids, stop=["文章"])
    assert detok.stopped_on == "文章" and "".join(deltas) == "日本語の"
