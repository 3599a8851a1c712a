"""Sampler against transformers' own logits processors, and per-request seeds independent of the batch."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from internvl_serve.decoder.engine.sampler import SamplingRow, make_generator, process_logits, sample
from internvl_serve.decoder.engine.sampling_params import SamplingParams

V = 50


def logits(seed: int, rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def hf_process(row_logits: torch.Tensor, history: list[int], params: SamplingParams) -> torch.Tensor:
    """transformers' processors in generate's order: penalty, temperature, top-k, top-p."""
    scores = row_logits[None].clone()
    ids = torch.tensor([history])
    if params.repetition_penalty:
        scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
    if not params.greedy:
        scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
        if params.top_k:
            scores = TopKLogitsWarper(params.top_k)(ids, scores)
        if params.top_p:
            scores = TopPLogitsWarper(params.top_p)(ids, scores)
    return scores[0]


def test_greedy_is_argmax_with_the_first_maximum_on_ties():
    x = logits(0, rows=4)
    x[2, 7] = x[2, 30] = x[2].max() + 1  # a tie: the lower index wins, as torch.argmax and transformers do
    rows = [SamplingRow(SamplingParams(), None, None) for _ in range(4)]
    assert sample(x, rows) == x.argmax(-1).tolist()
    assert sample(x, rows)[2] == 7


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.9, top_k=10, top_p=0.6),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.0, top_p=0.01),  # keeps at least the most likely token
        SamplingParams(repetition_penalty=1.5),
        SamplingParams(temperature=0.8, top_k=8, repetition_penalty=1.2),
        SamplingParams(temperature=0.8, repetition_penalty=0.7),  # < 1 encourages repetition
    ],
)
def test_processed_logits_match_transformers(params):
    history = [3, 3, 9, 17, 42, 0]
    for seed in range(3):
        x = logits(seed)[0]
        x[3], x[9] = -abs(x[3]), abs(x[9])  # seen tokens with a negative and a positive logit
        ours = process_logits(x, SamplingRow(params, None, history))
        ref = hf_process(x, history, params)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        finite = torch.isfinite(ref)
        torch.testing.assert_close(ours[finite], ref[finite], rtol=0, atol=0)


def test_repetition_penalty_changes_greedy_choice_like_transformers():
    x = torch.zeros(1, V)
    x[0, 5], x[0, 6] = 2.0, 1.5
    params = SamplingParams(repetition_penalty=2.0)
    assert sample(x, [SamplingRow(params, None, [5])]) == [6]  # 2.0 / 2 < 1.5
    assert sample(x, [SamplingRow(params, None, [1])]) == [5]


def test_sampling_draws_only_from_the_kept_tokens():
    x = logits(1)
    keep = set(torch.topk(x[0], 3).indices.tolist())
    params = SamplingParams(temperature=2.0, top_k=3)
    gen = make_generator(0, torch.device("cpu"))
    drawn = {sample(x, [SamplingRow(params, gen, None)])[0] for _ in range(200)}
    assert drawn <= keep and len(drawn) == 3


def _draws(seed: int, steps: list[torch.Tensor], position: int, neighbours: int) -> list[int]:
    """Sample one request for several steps sitting at `position` among `neighbours` other rows."""
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=seed)
    mine = make_generator(seed, torch.device("cpu"))
    others = [make_generator(1000 + i, torch.device("cpu")) for i in range(neighbours)]
    out = []
    for step_logits in steps:
        batch = [logits(len(out) * 10 + i)[0] for i in range(neighbours)]
        rows = [SamplingRow(SamplingParams(temperature=1.0, seed=1000 + i), g, None) for i, g in enumerate(others)]
        batch.insert(position, step_logits)
        rows.insert(position, SamplingRow(params, mine, None))
        out.append(sample(torch.stack(batch), rows)[position])
    return out


def test_seeded_sampling_is_reproducible_whatever_the_batch():
    steps = [logits(100 + i)[0] / 3 for i in range(20)]  # flat enough that draws vary
    alone = _draws(7, steps, position=0, neighbours=0)
    assert _draws(7, steps, position=0, neighbours=0) == alone
    assert _draws(7, steps, position=2, neighbours=3) == alone
    assert _draws(7, steps, position=5, neighbours=5) == alone
    assert _draws(8, steps, position=0, neighbours=0) != alone
