"""Log probabilities of generated tokens: the log-softmax of the model's raw logits, taken before repetition
penalty, temperature, top-k/top-p and grammar masks (vLLM's default, "raw_logprobs"), so they describe the
model, not the sampler's settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float
    token: str = ""  # the token decoded alone
    token_bytes: bytes = b""  # its exact bytes (a partial UTF-8 character stays partial)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, logprob and text, and the top alternatives, most likely first."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()
    token: str = ""  # filled in on the engine's loop (with_texts), where the tokenizer may be used
    token_bytes: bytes = b""


def compute_logprobs(logits: torch.Tensor, tokens: list[int], top_ns: list[int]) -> list[TokenLogprob]:
    """For each row i of raw logits [num_rows, vocab]: tokens[i]'s logprob and the top_ns[i] best."""
    if not tokens:
        return []
    logp = logits.float().log_softmax(dim=-1)
    chosen = logp.gather(-1, torch.tensor(tokens, device=logp.device).unsqueeze(-1)).squeeze(-1).tolist()
    k = max(top_ns)
    top_vals, top_ids = logp.topk(k, dim=-1) if k else (None, None)
    out = []
    for i, n in enumerate(top_ns):
        top = ()
        if n:
            top = tuple(TopLogprob(t, v) for t, v in zip(top_ids[i, :n].tolist(), top_vals[i, :n].tolist()))
        out.append(TokenLogprob(tokens[i], chosen[i], top))
    return out


class TokenTexts:
    """Each token id decoded alone, special tokens included, and its exact bytes (for logprob entries);
    cached per id."""

    def __init__(self, tokenizer, cache_size: int = 65536):
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}  # byte-level BPE's alphabet

        def text_and_bytes(token_id: int) -> tuple[str, bytes]:
            text = tokenizer.decode([token_id], skip_special_tokens=False)
            piece = tokenizer.convert_ids_to_tokens(token_id) or ""
            if piece and all(c in byte_of for c in piece):
                return text, bytes(byte_of[c] for c in piece)
            return text, text.encode("utf-8")  # not a byte-level piece (an added token such as <|im_end|>)

        self._lookup = lru_cache(maxsize=cache_size)(text_and_bytes)

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        return self._lookup(token_id)

    def with_texts(self, entry: TokenLogprob) -> TokenLogprob:
        top = tuple(TopLogprob(t.token_id, t.logprob, *self(t.token_id)) for t in entry.top)
        return TokenLogprob(entry.token_id, entry.logprob, top, *self(entry.token_id))
