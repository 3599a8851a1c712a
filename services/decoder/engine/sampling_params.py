"""SamplingParams: how to pick tokens and when to stop, with the proto's "zero means default" semantics."""

from __future__ import annotations

import math
from dataclasses import dataclass

from internvl_serve.common.errors import InvalidArgument
from internvl_serve.decoder.engine.logprobs import MAX_TOP_LOGPROBS
from internvl_serve.decoder.engine.structured_output import GrammarSpec, check_json_schema, grammar_spec

MAX_STOP_STRINGS = 16
MAX_STOP_BYTES = 256


@dataclass(frozen=True)
class SamplingParams:
    """Fields mirror internvl.v1.SamplingParams; every zero value selects the default.

    max_new_tokens 0 = the server default; temperature 0 = greedy (top_p, top_k and seed are then
    ignored); top_p 0 = 1.0 (off); top_k 0 = no limit; seed None = a fresh random seed;
    repetition_penalty 0 = 1.0 (off). json_schema / regex "" = unconstrained; top_logprobs needs logprobs.
    """

    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    repetition_penalty: float = 0.0
    json_schema: str = ""  # constrained decoding (structured_output.py)
    regex: str = ""
    logprobs: bool = False  # each generated token's raw logprob (logprobs.py)
    top_logprobs: int = 0

    def validate(self) -> None:
        """Raise InvalidArgument naming the field and the accepted range."""
        if self.max_new_tokens < 0:
            raise InvalidArgument(
                f"sampling.max_new_tokens must be >= 0 (0 = server default), got {self.max_new_tokens}"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument(
                f"sampling.temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}"
            )
        if not math.isfinite(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            raise InvalidArgument(f"sampling.top_p must lie in [0, 1] (0 = off), got {self.top_p}")
        if self.top_k < 0:
            raise InvalidArgument(f"sampling.top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InvalidArgument(f"sampling.seed must be an unsigned 64-bit integer, got {self.seed}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty < 0:
            raise InvalidArgument(
                f"sampling.repetition_penalty must be a finite number > 0 (0 = off), got {self.repetition_penalty}"
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument(f"sampling.stop has {len(self.stop)} strings; at most {MAX_STOP_STRINGS} are allowed")
        for i, s in enumerate(self.stop):
            n = len(s.encode("utf-8"))
            if not 1 <= n <= MAX_STOP_BYTES:
                raise InvalidArgument(
                    f"sampling.stop[{i}] is {n} UTF-8 bytes; each stop string must be 1 to {MAX_STOP_BYTES}"
                )
        self._validate_extras()

    def _validate_extras(self) -> None:
        if self.json_schema and self.regex:
            raise InvalidArgument("sampling.json_schema and sampling.regex cannot both be set: choose one")
        if (self.json_schema or self.regex) and self.ignore_eos:
            raise InvalidArgument(
                "sampling.ignore_eos cannot be combined with json_schema or regex: a constrained reply ends on "
                "end-of-sequence once it is complete"
            )
        if self.json_schema:
            check_json_schema(self.json_schema)
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(f"sampling.top_logprobs must lie in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.top_logprobs and not self.logprobs:
            raise InvalidArgument("sampling.top_logprobs needs sampling.logprobs set to true")

    @property
    def grammar(self) -> GrammarSpec | None:
        return grammar_spec(self.json_schema, self.regex)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def effective_top_p(self) -> float:
        return 1.0 if self.top_p == 0.0 else self.top_p

    @property
    def effective_repetition_penalty(self) -> float:
        return 1.0 if self.repetition_penalty == 0.0 else self.repetition_penalty
