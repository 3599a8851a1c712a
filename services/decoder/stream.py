"""From a request to a Sequence (length checks, stopping ids, RNG), and from sampled tokens to deltas."""

from __future__ import annotations

import asyncio
import time

from internvl_serve.common.errors import DeadlineExceeded, InvalidArgument
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.detokenizer import IncrementalDetokenizer
from internvl_serve.decoder.prompt import Prompt
from internvl_serve.decoder.request import FinishReason, GenerationDelta, GenerationRequest, Usage
from internvl_serve.decoder.runtime import DecoderRuntime
from internvl_serve.decoder.sampler import make_generator
from internvl_serve.decoder.sequence import Sequence


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
    seq_id: int, request: GenerationRequest, prompt: Prompt, runtime: DecoderRuntime, config: DecoderConfig
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
        media_cache_hits=sum(1 for m in request.media if m.cache_hit),
        arrival_time=time.monotonic(),
        deadline=request.deadline,
        generator=None if sampling.greedy else make_generator(sampling.seed, runtime.device),
    )


class RequestStream:
    """The output side of one request: detokenizer, stopping rules and the queue its consumer reads."""

    def __init__(self, seq: Sequence, tokenizer):
        self.seq = seq
        self.detokenizer = IncrementalDetokenizer(tokenizer, seq.sampling.stop)
        self.queue: asyncio.Queue = asyncio.Queue()

    def add_token(self, token: int, context_len: int) -> GenerationDelta:
        """Record a sampled token; the delta to send (finished when a stopping rule fired)."""
        seq = self.seq
        seq.output_ids.append(token)
        text = self.detokenizer.add(token)
        reason = None
        if self.detokenizer.stopped_on is not None or token in seq.eos_ids:
            reason = FinishReason.STOP
        elif len(seq.output_ids) >= seq.max_new_tokens or seq.num_tokens >= context_len:
            reason = FinishReason.LENGTH
        if reason is None:
            return GenerationDelta(text, [token])
        text += self.detokenizer.finish()
        if self.detokenizer.stopped_on is not None:
            reason = FinishReason.STOP  # the final flush completed a stop string
        usage = Usage(
            input_tokens=seq.num_prompt_tokens,
            output_tokens=len(seq.output_ids),
            image_tokens=seq.num_image_tokens,
            media_cache_hits=seq.media_cache_hits,
            queue_time_s=max(0.0, (seq.first_scheduled_time or seq.arrival_time) - seq.arrival_time),
            num_preemptions=seq.num_preemptions,
        )
        return GenerationDelta(text, [token], reason, usage)

    def deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the request's deadline passed after {len(self.seq.output_ids)} generated tokens; "
            "raise the deadline or ask for fewer tokens"
        )
