"""The decoder's traces and metrics: a "chat {model}" span per Generate/GenerateStream call with the GenAI
semantic-convention attributes, and the engine's gauges and latency histograms.

No prompt or completion text is recorded unless the service's Telemetry says so (INTERNVL_TRACE_CONTENT=1):
then gen_ai.input.messages / gen_ai.output.messages carry the chat's text parts (media as placeholders).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import SpanKind

from internvl_serve.decoder.engine import GenerationDelta, SamplingParams

PROVIDER = "internvl-serve"
# Seconds (the SDK's default buckets are for milliseconds); the same in OTLP and on Prometheus /metrics.
_LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0]
_LATENCY_BUCKETS += [20.0, 30.0, 60.0, 120.0, 300.0]  # long generations, queues under load
_TOKEN_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]


class DecoderMetrics:
    """Instruments of one decoder. `engine()` returns the Engine once loaded (None before)."""

    def __init__(self, meter: Meter, engine: Callable[[], Any]):
        self._engine = engine
        self.ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token",
            unit="s",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
            description="From receiving a request to its first output token (media encoding included)",
        )
        self.tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token",
            unit="s",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            description="Mean time per output token after the first, per request",
        )
        self.duration = meter.create_histogram(
            "gen_ai.server.request.duration",
            unit="s",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
            description="Time from receiving a request to its last output token or its failure",
        )
        self.queue_time = meter.create_histogram(
            "internvl.decoder.queue_time",
            unit="s",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
            description="Time a request waited in the scheduler's queue before its first step",
        )
        self.tokens = meter.create_counter(
            "internvl.decoder.tokens", unit="{token}", description="Prompt (input) and generated (output) tokens"
        )
        for name, unit, description, read in (
            ("queue.depth", "{request}", "Requests waiting to be scheduled", lambda s: s.num_waiting),
            ("running_sequences", "{sequence}", "Sequences in the running batch", lambda s: s.num_running),
            ("kv_blocks.used", "{block}", "KV-cache blocks in use", lambda s: s.num_total_blocks - s.num_free_blocks),
            ("kv_blocks.total", "{block}", "KV-cache blocks in the pool", lambda s: s.num_total_blocks),
            (
                "kv_blocks.cached",
                "{block}",
                "KV-cache blocks holding reusable prefix content",
                lambda s: s.num_cached_blocks,
            ),
            (
                "prefix_cache.hit_rate",
                "1",
                "Share of admitted prompt tokens served from the prefix cache",
                lambda s: s.prefix_cache_hit_rate,
            ),
        ):
            meter.create_observable_gauge(
                f"internvl.decoder.{name}", [self._observe(read)], unit=unit, description=description
            )
        meter.create_observable_counter(
            "internvl.decoder.preemptions",
            [self._observe(lambda s: s.num_preemptions)],
            unit="{preemption}",
            description="Sequences preempted (recomputed later)",
        )
        meter.create_observable_counter(
            "internvl.decoder.prefix_cache.cached_tokens",
            [self._observe(lambda s: s.num_cached_prompt_tokens)],
            unit="{token}",
            description="Prompt tokens whose KV came from the prefix cache",
        )
        meter.create_observable_counter(
            "internvl.decoder.steps",
            [self._observe(lambda s: s.num_steps)],
            unit="{step}",
            description="Engine steps run",
        )

    def _observe(self, read: Callable[[Any], int]):
        def callback(options: CallbackOptions):
            engine = self._engine()
            return [] if engine is None else [Observation(read(engine.stats()))]

        return callback


class ChatTrace:
    """One request's span and measurements: start() before any work, delta() per delta, then end()."""

    def __init__(
        self, tracer: trace.Tracer, metrics: DecoderMetrics | None, model: str, *, stream: bool, capture_content: bool
    ):
        self.tracer = tracer
        self.metrics = metrics
        self.model = model
        self.stream = stream
        self.capture_content = capture_content
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.last: GenerationDelta | None = None
        self._text: list[str] = []
        self._ended = False
        self.span: trace.Span = trace.INVALID_SPAN

    def start(self):
        """The span, as a context manager that makes it current (so the encoder calls are its children)."""
        attrs = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": self.model,
            "gen_ai.request.stream": self.stream,
        }
        return self.tracer.start_as_current_span(f"chat {self.model}", kind=SpanKind.INTERNAL, attributes=attrs)

    def request(
        self,
        span: trace.Span,
        request_id: str,
        sampling: SamplingParams,
        default_max_tokens: int,
        chat: list[dict],
        num_media: int,
    ) -> None:
        self.span = span
        attrs: dict[str, Any] = {
            "gen_ai.response.id": request_id,
            "gen_ai.request.max_tokens": sampling.max_new_tokens or default_max_tokens,
            "gen_ai.request.temperature": sampling.temperature,
            "internvl.media.count": num_media,
        }
        if not sampling.greedy:  # top_p, top_k and seed only matter when sampling
            attrs["gen_ai.request.top_p"] = sampling.effective_top_p
            if sampling.top_k:
                attrs["gen_ai.request.top_k"] = sampling.top_k
            if sampling.seed is not None:
                attrs["gen_ai.request.seed"] = sampling.seed
        if sampling.repetition_penalty:
            attrs["internvl.request.repetition_penalty"] = sampling.repetition_penalty
        if self.capture_content:
            attrs["gen_ai.input.messages"] = json.dumps([_message(m) for m in chat], ensure_ascii=False)
        span.set_attributes(attrs)

    def delta(self, delta: GenerationDelta) -> None:
        if self.first_token_at is None and delta.token_ids:
            self.first_token_at = time.monotonic()
            self.span.add_event("gen_ai.first_token")
        if self.capture_content:
            self._text.append(delta.text)
        self.last = delta

    def end(self, error: BaseException | None = None) -> None:
        """Usage, finish reason and timings on the span; the latency metrics (successful requests only)."""
        if self._ended:
            return
        self._ended = True
        now = time.monotonic()
        base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": self.model}
        last = self.last
        if error is not None or last is None or not last.finished:
            if self.metrics is not None:
                error_type = type(error).__name__ if error is not None else "cancelled"
                self.metrics.duration.record(now - self.started, {**base, "error.type": error_type})
            return
        usage = last.usage
        reason = last.finish_reason.value
        attrs: dict[str, Any] = {
            "gen_ai.response.model": self.model,
            "gen_ai.response.finish_reasons": [reason],
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "internvl.image_tokens": usage.image_tokens,
            "internvl.media_cache_hits": usage.media_cache_hits,
            "gen_ai.usage.cache_read.input_tokens": usage.cached_tokens,
            "internvl.prefix_cache.hit_rate": usage.cached_tokens / usage.input_tokens if usage.input_tokens else 0.0,
            "internvl.queue_time_s": usage.queue_time_s,
            "internvl.preemptions": usage.num_preemptions,
        }
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        if ttft is not None:
            attrs["internvl.time_to_first_token_s"] = ttft
            attrs["gen_ai.response.time_to_first_chunk"] = ttft
        if self.capture_content:
            answer = {"type": "text", "content": "".join(self._text)}
            output = [{"role": "assistant", "parts": [answer], "finish_reason": reason}]
            attrs["gen_ai.output.messages"] = json.dumps(output, ensure_ascii=False)
        self.span.set_attributes(attrs)
        if self.metrics is None:
            return
        m = self.metrics
        m.duration.record(now - self.started, base)
        m.queue_time.record(usage.queue_time_s, base)
        m.tokens.add(usage.input_tokens, {**base, "gen_ai.token.type": "input"})
        m.tokens.add(usage.output_tokens, {**base, "gen_ai.token.type": "output"})
        if ttft is not None:
            m.ttft.record(ttft, base)
            if usage.output_tokens > 1:
                m.tpot.record((now - self.first_token_at) / (usage.output_tokens - 1), base)


def _message(message: dict) -> dict:
    """A chat message in the GenAI semantic conventions' shape: text parts, media as {"type": "image"}."""
    content = message.get("content")
    if isinstance(content, str):
        parts = [{"type": "text", "content": content}]
    else:
        parts = [
            {"type": "text", "content": p.get("text", "")} if p.get("type") == "text" else {"type": p.get("type")}
            for p in content or []
        ]
    return {"role": message.get("role"), "parts": parts}
