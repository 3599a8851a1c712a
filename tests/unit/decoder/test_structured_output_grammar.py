"""The grammar layer on the tiny checkpoint's tokenizer: valid JSON only (no raw control characters, escapes
allowed, also in length-bounded strings), bad schemas and regexes refused with the library's reason."""

from __future__ import annotations

import json

import pytest
import torch

from internvl_serve.common.errors import InvalidArgument
from internvl_serve.decoder.engine.structured_output import GrammarSpec, StructuredOutput


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def structured(tokenizer, tiny_model_dir):
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["vocab_size"]
    return StructuredOutput(tokenizer, vocab, frozenset({tokenizer.convert_tokens_to_ids("<|im_end|>")}))


def consumes(structured, tokenizer, spec, text) -> bool:
    matcher = structured.matcher(spec)
    return all(matcher.consume_token(t) for t in tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("bounded", [False, True])
def test_strings_take_escapes_but_never_raw_control_characters(structured, tokenizer, bounded):
    schema = {"type": "string", **({"maxLength": 24} if bounded else {})}
    spec = GrammarSpec("json_schema", json.dumps(schema))
    assert consumes(structured, tokenizer, spec, '"a\\nb\\"c"')
    assert not consumes(structured, tokenizer, spec, '"ab\x07')


def test_the_mask_allows_only_eos_once_the_document_is_complete(structured, tokenizer):
    spec = GrammarSpec("regex", r"ab")
    matcher = structured.matcher(spec)
    for token in tokenizer.encode("ab", add_special_tokens=False):
        assert matcher.consume_token(token)
    logits = torch.zeros(2, structured.vocab_size)
    structured.apply(logits, [1], [matcher])
    assert torch.isfinite(logits[0]).all()  # an unconstrained row is untouched
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (GrammarSpec("json_schema", '{"type": "objec"}'), "objec"),
        (GrammarSpec("json_schema", '{"type": "string", "pattern": "[a-"}'), "cannot be used"),
        (GrammarSpec("regex", "(a"), "regex cannot be used"),
    ],
)
def test_bad_grammars_are_invalid_argument(structured, spec, fragment):
    with pytest.raises(InvalidArgument, match=r"sampling\.(json_schema|regex) cannot be used") as info:
        structured.grammar(spec)
    assert fragment in str(info.value)
