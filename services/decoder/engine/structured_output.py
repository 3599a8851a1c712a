"""Structured output: JSON-schema and regex constrained decoding with xgrammar.

Each constrained sequence owns a GrammarMatcher. Before sampling, its matcher fills one row of a token
bitmask and the disallowed logits become -inf (batched: one bitmask for the step's constrained rows);
after sampling, the chosen token is accepted, which advances the matcher. Once the grammar is complete the
only allowed tokens are the checkpoint's end-of-sequence ids, so the scheduler's ordinary eos stop ends the
reply. Compiled grammars are cached by xgrammar's compiler (same schema, same compiled grammar).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from internvl_serve.common.errors import InvalidArgument

# Compact JSON: a random or weak model must not be able to wander off into endless whitespace.
_JSON_SEPARATORS = (",", ":")


@dataclass(frozen=True)
class GrammarSpec:
    """What a request constrains its reply to: kind "json_schema" or "regex", and its source text."""

    kind: str
    source: str


class StructuredOutput:
    """The tokenizer's vocabulary as xgrammar sees it, and a compiler (thread-safe, with a cache)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: frozenset[int]):
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=2)

    def compile(self, spec: GrammarSpec):
        """The compiled grammar, or InvalidArgument naming the field and xgrammar's reason."""
        try:
            if spec.kind == "json_schema":
                return self._compiler.compile_json_schema(
                    spec.source, any_whitespace=False, separators=_JSON_SEPARATORS, strict_mode=True
                )
            if spec.kind == "regex":
                return self._compiler.compile_regex(spec.source)
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            reason = reason.split(": ", 1)[-1] if reason.startswith("[") else reason  # drop xgrammar's C++ location
            raise InvalidArgument(f"sampling.{spec.kind} cannot be used: {reason}") from None
        raise ValueError(f"unknown grammar kind {spec.kind!r}")

    def matcher(self, spec: GrammarSpec):
        return self._xgr.GrammarMatcher(self.compile(spec), override_stop_tokens=self.stop_token_ids)

    def apply(self, logits: torch.Tensor, rows: list[int], matchers: list) -> None:
        """Mask logits[rows[i]] in place to what matchers[i] allows next."""
        if not rows:
            return
        bitmask = self._xgr.allocate_token_bitmask(len(rows), self.vocab_size)
        for i, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(bitmask, i)
        view = logits[rows]
        self._xgr.apply_token_bitmask_inplace(view, bitmask.to(logits.device), vocab_size=self.vocab_size)
        logits[rows] = view


def accept(matcher, token: int) -> None:
    """Advance a matcher by the token sampled under its mask (refusal would be a masking bug)."""
    if not matcher.accept_token(token):
        raise RuntimeError(f"the grammar refused token {token} that was sampled under its own mask")


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
