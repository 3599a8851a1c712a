"""Structured output: JSON-schema and regex constrained decoding with llguidance.

Each constrained sequence owns an LLMatcher. Before sampling, the step's constrained rows get one token
bitmask (computed in parallel by llguidance's executor) and their disallowed logits become -inf; after
sampling, each matcher consumes its row's token. Once the document is complete the only allowed tokens
are the checkpoint's end-of-sequence ids, so the scheduler's ordinary eos stop ends the reply.

llguidance rather than xgrammar: xgrammar 0.2.9 lowers a string with maxLength/minLength to a character
class that admits raw control characters (invalid JSON: mlc-ai/xgrammar#800, open), and bounded strings
are exactly what a schema needs to keep a weak model's reply finite.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from internvl_serve.common.errors import InvalidArgument

# Compact JSON (no whitespace between tokens): a weak model must not wander off into endless whitespace.
_JSON_DEFAULTS = {"whitespace_flexible": False}
_BITS = torch.arange(32, dtype=torch.int32)
_CHECKED_GRAMMARS = 256


@dataclass(frozen=True)
class GrammarSpec:
    """What a request constrains its reply to: kind "json_schema" or "regex", and its source text."""

    kind: str
    source: str


class StructuredOutput:
    """The tokenizer as llguidance sees it, grammar checks, matchers and the batched mask."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: frozenset[int]):
        import llguidance
        import llguidance.hf

        self._ll = llguidance
        self.vocab_size = vocab_size
        stops = sorted(t for t in stop_token_ids if 0 <= t < vocab_size)  # ids past the vocabulary never occur
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=stops or None)
        self._executor = llguidance.LLExecutor(num_threads=2)
        self._checked: OrderedDict[GrammarSpec, str] = OrderedDict()  # spec -> checked grammar, LRU
        self._lock = threading.Lock()

    def grammar(self, spec: GrammarSpec) -> str:
        """The checked grammar (cached: a request's is checked before its media are encoded and used again
        for its matcher), or InvalidArgument naming the field and llguidance's reason."""
        with self._lock:
            if spec in self._checked:
                self._checked.move_to_end(spec)
                return self._checked[spec]
        grammar = self._check(spec)
        with self._lock:
            self._checked[spec] = grammar
            while len(self._checked) > _CHECKED_GRAMMARS:
                self._checked.popitem(last=False)
        return grammar

    def _check(self, spec: GrammarSpec) -> str:
        ll = self._ll.LLMatcher
        try:
            if spec.kind == "json_schema":
                grammar = ll.grammar_from_json_schema(spec.source, defaults=_JSON_DEFAULTS)
            elif spec.kind == "regex":
                grammar = ll.grammar_from_regex(spec.source)
            else:
                raise ValueError(f"unknown grammar kind {spec.kind!r}")
            error = ll.validate_grammar(grammar, self._tokenizer)
        except (RuntimeError, ValueError, TypeError) as exc:
            error = str(exc)
        if error:
            raise InvalidArgument(f"sampling.{spec.kind} cannot be used: {_first_lines(error)}")
        return grammar

    def matcher(self, spec: GrammarSpec):
        matcher = self._ll.LLMatcher(self._tokenizer, self.grammar(spec))
        if matcher.is_error():
            raise InvalidArgument(f"sampling.{spec.kind} cannot be used: {_first_lines(matcher.get_error())}")
        return matcher

    def apply(self, logits: torch.Tensor, rows: list[int], matchers: list) -> None:
        """Mask logits[rows[i]] in place to what matchers[i] allows next."""
        if not rows:
            return
        words = (self.vocab_size + 31) // 32
        bitmask = torch.full((len(rows), words), -1, dtype=torch.int32)
        self._executor.unsafe_compute_mask_ptr(
            [(m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(), words * 4, len(rows)
        )
        allowed = ((bitmask.unsqueeze(-1) >> _BITS) & 1).view(len(rows), -1)[:, : self.vocab_size].bool()
        index = torch.tensor(rows, device=logits.device)  # logits are lm_head's output: vocab_size wide
        logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))


def accept(matcher, token: int) -> None:
    """Advance a matcher by the token sampled under its mask (refusal would be a masking bug; an errored
    matcher would otherwise accept end-of-sequence and end the reply as if complete)."""
    if not matcher.consume_token(token) or matcher.is_error():
        raise RuntimeError(f"the grammar refused token {token} sampled under its own mask: {matcher.get_error()}")


def _first_lines(text: str, limit: int = 3) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(lines[:limit])[:400]


def grammar_spec(json_schema: str, regex: str) -> GrammarSpec | None:
    """The request's constraint from SamplingParams' strings (validated there), or None."""
    if json_schema:
        return GrammarSpec("json_schema", json_schema)
    if regex:
        return GrammarSpec("regex", regex)
    return None


def check_json_schema(text: str) -> None:
    """A schema must be a JSON object (or true/false) before the grammar library sees it."""
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"sampling.json_schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise InvalidArgument(f"sampling.json_schema must be a JSON object, got {type(schema).__name__}")
