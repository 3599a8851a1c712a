"""From a request and its prompt to a Sequence: the resolved max_new_tokens, the stopping ids, the RNG."""

from __future__ import annotations

import time
from typing import Any

from internvl_serve.common.errors import InvalidArgument
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.engine.loaded_model import LoadedModel
from internvl_serve.decoder.engine.prompt import Prompt
from internvl_serve.decoder.engine.request import GenerationRequest
from internvl_serve.decoder.engine.sampler import make_generator
from internvl_serve.decoder.engine.sequence import Sequence


def resolve_max_new_tokens(requested: int, prompt_len: int, context_len: int, default: int) -> int:
    """0 means the server default, capped by the room the context leaves; an explicit value past the
    context is refused. A prompt must leave room for at least one new token."""
    if prompt_len >= context_len:
        raise InvalidArgument(
            f"the prompt is {prompt_len} tokens (chat template and media placeholders included), but the "
            f"context holds {context_len} tokens in all: shorten the chat or send fewer or smaller media"
        )
    room = context_len - prompt_len
    if requested == 0:
        return min(default, room)
    if requested > room:
        raise InvalidArgument(
            f"sampling.max_new_tokens {requested} plus the prompt's {prompt_len} tokens exceeds the context "
            f"length {context_len}; ask for at most {room} new tokens (or 0 for the server default)"
        )
    return requested


def new_sequence(
    seq_id: int,
    request: GenerationRequest,
    prompt: Prompt,
    runtime: LoadedModel,
    config: DecoderConfig,
    grammar: Any = None,
) -> Sequence:
    sampling = request.sampling
    max_new = resolve_max_new_tokens(
        sampling.max_new_tokens, len(prompt.token_ids), runtime.context_len, config.default_max_new_tokens
    )
    return Sequence(
        seq_id=seq_id,
        request_id=request.request_id,
        prompt_ids=list(prompt.token_ids),
        sampling=sampling,
        max_new_tokens=max_new,
        eos_ids=frozenset() if sampling.ignore_eos else runtime.eos_token_ids,
        media_positions=list(prompt.media_positions),
        media_embeddings=prompt.media_embeddings,
        media_items=list(prompt.media_items),
        cache_salt=request.cache_salt,
        media_cache_hits=sum(1 for m in request.media if m.cache_hit),
        arrival_time=time.monotonic(),
        deadline=request.deadline,
        generator=None if sampling.greedy else make_generator(sampling.seed, runtime.device),
        grammar=grammar,
    )
