"""Sampler: next tokens from logits, with transformers' logits-processor semantics.

Logprobs, when asked for, come from the raw logits first (logprobs.py). Then a grammar's mask (structured
output), then as in transformers' generate: repetition penalty, then (sampling only) temperature, top-k,
top-p, then a multinomial draw from the request's own torch.Generator, so a seeded request gives the same
tokens whatever else is in the batch. Greedy is torch.argmax (the first maximum on ties), as transformers
does. Each constrained row's matcher then accepts its token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from internvl_serve.decoder.engine.logprobs import TokenLogprob, compute_logprobs
from internvl_serve.decoder.engine.sampling_params import SamplingParams
from internvl_serve.decoder.engine.structured_output import StructuredOutput, accept


@dataclass
class SamplingRow:
    """What the sampler needs of one sequence this step (a snapshot taken between steps)."""

    params: SamplingParams
    generator: torch.Generator | None  # None for greedy
    history: list[int] | None  # prompt + output ids, only when a repetition penalty is set
    grammar: Any = None  # the sequence's llguidance LLMatcher (structured output), advanced here


@dataclass
class StepSamples:
    """One token per row, and for rows that asked for logprobs their entry (None elsewhere)."""

    tokens: list[int]
    logprobs: list[TokenLogprob | None] = field(default_factory=list)


def apply_repetition_penalty(logits: torch.Tensor, history: list[int], penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor for one row: every token seen in prompt or output has
    its logit divided by `penalty` when positive and multiplied by it when negative."""
    ids = torch.tensor(sorted(set(history)), dtype=torch.long, device=logits.device)
    seen = logits.gather(-1, ids)
    return logits.scatter(-1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """transformers' TopKLogitsWarper: drop everything below the k-th largest logit."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: keep the smallest set whose probability reaches top_p (at least one)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
    """The logits one row is sampled (or arg-maxed) from, fp32 [vocab]."""
    params = row.params
    penalty = params.effective_repetition_penalty
    if penalty != 1.0 and row.history:
        logits = apply_repetition_penalty(logits, row.history, penalty)
    if params.greedy:
        return logits
    logits = apply_temperature(logits, params.temperature)
    logits = apply_top_k(logits, params.top_k)
    return apply_top_p(logits, params.effective_top_p)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A per-request generator; an unseeded request gets a fresh random seed."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed % 2**64)
    return generator


def sample(logits: torch.Tensor, rows: list[SamplingRow], structured: StructuredOutput | None = None) -> list[int]:
    """One token per row of logits [num_rows, vocab] (fp32)."""
    return sample_step(logits, rows, structured).tokens


@torch.inference_mode()  # the model's logits are inference tensors; masks are applied in place
def sample_step(
    logits: torch.Tensor, rows: list[SamplingRow], structured: StructuredOutput | None = None
) -> StepSamples:
    """Tokens (and logprobs where asked) for a step's rows; advances the rows' grammars."""
    if len(rows) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {len(rows)} sampling rows")
    want_logprobs = [i for i, r in enumerate(rows) if r.params.logprobs]
    raw = logits[want_logprobs] if want_logprobs else None  # a copy, before any mask or penalty
    constrained = [i for i, r in enumerate(rows) if r.grammar is not None]
    if constrained:
        structured.apply(logits, constrained, [rows[i].grammar for i in constrained])
    tokens = _pick(logits, rows)
    for i in constrained:
        accept(rows[i].grammar, tokens[i])
    logprobs: list[TokenLogprob | None] = [None] * len(rows)
    if raw is not None:
        entries = compute_logprobs(
            raw,
            [tokens[i] for i in want_logprobs],
            [rows[i].params.top_logprobs for i in want_logprobs],
        )
        for i, entry in zip(want_logprobs, entries):
            logprobs[i] = entry
    return StepSamples(tokens, logprobs)


def _pick(logits: torch.Tensor, rows: list[SamplingRow]) -> list[int]:
    simple_greedy = [
        i
        for i, r in enumerate(rows)
        if r.params.greedy and (r.params.effective_repetition_penalty == 1.0 or not r.history)
    ]
    tokens: list[int | None] = [None] * len(rows)
    if simple_greedy:
        picked = logits[simple_greedy].argmax(dim=-1).tolist()
        for i, token in zip(simple_greedy, picked):
            tokens[i] = token
    for i, row in enumerate(rows):
        if tokens[i] is not None:
            continue
        processed = process_logits(logits[i], row)
        if row.params.greedy:
            tokens[i] = int(processed.argmax(dim=-1))
        else:
            probs = processed.softmax(dim=-1)
            tokens[i] = int(torch.multinomial(probs, 1, generator=row.generator))
    return [int(t) for t in tokens]  # type: ignore[arg-type]
