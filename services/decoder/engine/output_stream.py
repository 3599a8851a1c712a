"""RequestStream: the output side of one request: its detokenizer, stop strings, and the queue its consumer reads.

Token-level stopping rules (eos, max_new_tokens) are the scheduler's (`Scheduler.update_from_output`);
stop strings need the text, so they are checked here, as vLLM's output processor does.
"""

from __future__ import annotations

import asyncio

from internvl_serve.common.errors import DeadlineExceeded
from internvl_serve.decoder.engine.detokenizer import IncrementalDetokenizer
from internvl_serve.decoder.engine.logprobs import TokenLogprob
from internvl_serve.decoder.engine.request import FinishReason, GenerationDelta, Usage
from internvl_serve.decoder.engine.sequence import Sequence


class RequestStream:
    def __init__(self, seq: Sequence, tokenizer):
        self.seq = seq
        self.detokenizer = IncrementalDetokenizer(tokenizer, seq.sampling.stop)
        self.queue: asyncio.Queue = asyncio.Queue()

    def delta_for(
        self, token: int, finish_reason: FinishReason | None, logprob: TokenLogprob | None = None
    ) -> GenerationDelta:
        """The delta for a token the scheduler has appended (`finish_reason`: the token-level stop that
        fired, if any; `logprob`: its entry when the request asked for logprobs). A stop string in the text
        finishes the reply with STOP."""
        text = self.detokenizer.add(token)
        logprobs = None if logprob is None else [logprob]
        reason = FinishReason.STOP if self.detokenizer.stopped_on is not None else finish_reason
        if reason is None:
            return GenerationDelta(text, [token], logprobs=logprobs)
        text += self.detokenizer.finish()
        if self.detokenizer.stopped_on is not None:
            reason = FinishReason.STOP  # the final flush completed a stop string
        return GenerationDelta(text, [token], reason, self.usage(), logprobs)

    def usage(self) -> Usage:
        seq = self.seq
        return Usage(
            input_tokens=seq.num_prompt_tokens,
            output_tokens=len(seq.output_ids),
            image_tokens=seq.num_image_tokens,
            media_cache_hits=seq.media_cache_hits,
            cached_tokens=seq.num_cached_tokens,
            queue_time_s=max(0.0, (seq.first_scheduled_time or seq.arrival_time) - seq.arrival_time),
            num_preemptions=seq.num_preemptions,
        )

    def deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the request's deadline passed after {len(self.seq.output_ids)} generated tokens; "
            "raise the deadline or ask for fewer tokens"
        )
