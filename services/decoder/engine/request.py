"""What crosses the engine's public boundary: a generation request, its streamed deltas, its result."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from internvl_serve.decoder.engine.logprobs import TokenLogprob
from internvl_serve.decoder.engine.media import MediaEmbedding
from internvl_serve.decoder.engine.sampling_params import SamplingParams


class FinishReason(enum.Enum):
    STOP = "stop"  # an eos token or a stop string
    LENGTH = "length"  # max_new_tokens, or the sequence reached the context length


@dataclass
class GenerationRequest:
    """One chat to answer.

    `messages` are Hugging Face chat messages: {"role": "system"|"user"|"assistant", "content": str or a
    list of {"type": "text", "text": ...} / {"type": "image"} / {"type": "video"} parts}. Media parts need
    no payload here: `media` holds the encoder's answer for each media part, in order of appearance.
    `deadline` is a time.monotonic() instant (None: no deadline). `cache_salt`: the tenant, unless tenants
    share the cache.
    """

    messages: list[dict[str, Any]]
    media: list[MediaEmbedding] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    deadline: float | None = None
    cache_salt: bytes = b""  # prefix-cache scope: requests share cached KV blocks only with the same salt


@dataclass(frozen=True)
class Usage:
    input_tokens: int  # prompt tokens after the chat template, media placeholders included
    output_tokens: int  # generated tokens, eos included
    image_tokens: int  # prompt positions filled with media embeddings
    media_cache_hits: int = 0  # media whose embeddings came from the encoder's cache
    cached_tokens: int = field(default=0, compare=False)  # prompt tokens whose KV came from the prefix cache
    # For telemetry; not part of what two usages are compared on (they differ run to run):
    queue_time_s: float = field(default=0.0, compare=False)  # from joining the scheduler's queue to its first step
    num_preemptions: int = field(default=0, compare=False)  # times its KV blocks were taken back and recomputed


@dataclass(frozen=True)
class GenerationDelta:
    """New text and token ids since the previous delta; the last one has finish_reason and usage."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token id, when the request asked for logprobs

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class GenerationResult:
    """The whole answer: what the deltas of a stream concatenate to."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[TokenLogprob] | None = None
