"""Engine: the decoder's loop (schedule -> run -> postprocess) behind an asyncio API.

The service calls `generate(request)` and iterates the deltas. New requests join the running batch
between steps (continuous batching). The model step runs in one worker thread, so the event loop stays
responsive; all scheduler and block state is touched only on the loop. Closing the iterator, cancelling
its task or passing the deadline frees the request's KV blocks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from internvl_serve.common.errors import InvalidArgument, ServiceError, Unavailable
from internvl_serve.common.logs import log_event
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.engine.block_manager import BlockManager
from internvl_serve.decoder.engine.cuda_graphs import DecodeGraphs, graph_buckets
from internvl_serve.decoder.engine.kv_cache import KVCache, KVCacheSpec, num_kv_blocks
from internvl_serve.decoder.engine.loaded_model import LoadedModel
from internvl_serve.decoder.engine.logprobs import TokenLogprob, TokenTexts
from internvl_serve.decoder.engine.memory_profile import activation_peak_bytes
from internvl_serve.decoder.engine.model_runner import ModelRunner, StepInputs
from internvl_serve.decoder.engine.output_stream import RequestStream
from internvl_serve.decoder.engine.request import GenerationDelta, GenerationRequest, GenerationResult
from internvl_serve.decoder.engine.sampler import SamplingRow, StepSamples, sample_step
from internvl_serve.decoder.engine.sampling_params import SamplingParams
from internvl_serve.decoder.engine.scheduler import SampledToken, Scheduler
from internvl_serve.decoder.engine.sequence import Sequence
from internvl_serve.decoder.engine.sequence_factory import new_sequence
from internvl_serve.decoder.engine.structured_output import StructuredOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    num_preemptions: int  # since start
    num_steps: int
    num_cached_blocks: int = 0  # blocks holding reusable prefix content (referenced or not)
    num_prompt_tokens: int = 0  # prompt tokens of admitted requests, since start
    num_cached_prompt_tokens: int = 0  # of those, served from the prefix cache

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.num_cached_prompt_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0


class Engine:
    """One per event loop. Build it from a loaded LoadedModel (cheap: allocates the KV cache)."""

    def __init__(self, runtime: LoadedModel, config: DecoderConfig | None = None):
        self.runtime = runtime
        self.config = config or runtime.config
        cfg = self.config
        model = runtime.model
        spec = KVCacheSpec.for_model(model.config, cfg.block_size, runtime.dtype, model.num_local_kv_heads)
        useful = cfg.max_num_seqs * -(-runtime.context_len // cfg.block_size)  # more could never be used
        _bind_device(runtime.device)  # this thread too: the profile run below launches kernels
        on_gpu = runtime.device.type == "cuda"
        graphs_on = cfg.cuda_graphs == "on" and on_gpu and runtime.tp is None
        peak = None
        if on_gpu and runtime.tp is None and cfg.num_kv_blocks is None:
            peak = activation_peak_bytes(model, spec, cfg.max_tokens_per_step, cfg.max_num_seqs, runtime.device)
            if graphs_on:  # each bucket's graph keeps its own fp32 logits output
                peak += sum(graph_buckets(cfg.max_num_seqs)) * model.config.vocab_size * 4
        num_blocks = min(num_kv_blocks(cfg, spec, runtime.device, peak), useful, runtime.tp_max_blocks or useful)
        self.kv_cache = KVCache(spec, num_blocks, runtime.device)
        if runtime.tp is not None:  # every rank's cache has the same blocks (its own K/V heads)
            runtime.tp.start_caches(num_blocks)
        self.block_manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, cfg.max_num_seqs, cfg.max_tokens_per_step, cfg.max_queue)
        # Graphs (--cuda-graphs on, CUDA, one rank) are captured at warm-up; until then the runner stays eager.
        graphs = None
        if graphs_on:
            graphs = DecodeGraphs(model, self.kv_cache, runtime.device, cfg.max_num_seqs, runtime.context_len)
        self.runner = ModelRunner(model, self.kv_cache, runtime.device, tp=runtime.tp, graphs=graphs)
        self._structured: StructuredOutput | None = None  # built on the first constrained request
        self._structured_lock = threading.Lock()
        self._token_texts = TokenTexts(runtime.tokenizer)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="decoder-step", initializer=_bind_device, initargs=(runtime.device,)
        )
        # Prompts are tokenized off the loop, one at a time: a fast tokenizer must not be used from two
        # threads at once (the prompt builder has its own instance; detokenizing stays on the loop).
        self._prompt_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoder-prompt")
        self._streams: dict[int, RequestStream] = {}
        self._ids = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._closing = False
        self._num_preemptions = 0
        self._num_steps = 0
        log_event(
            logger,
            "decoder.kv_cache",
            num_blocks=num_blocks,
            block_size=cfg.block_size,
            mib=round(self.kv_cache.nbytes / 2**20, 1),
            activation_peak_mib=None if peak is None else round(peak / 2**20, 1),
        )

    # ---- public API -------------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.block_manager.num_total_blocks

    def stats(self) -> EngineStats:
        return EngineStats(
            self.scheduler.num_running,
            self.scheduler.num_waiting,
            self.num_free_blocks,
            self.num_total_blocks,
            self._num_preemptions,
            self._num_steps,
            self.block_manager.num_cached_blocks,
            self.scheduler.num_prompt_tokens,
            self.scheduler.num_cached_prompt_tokens,
        )

    @property
    def structured(self) -> StructuredOutput:
        """The grammar layer over this tokenizer (its vocabulary scan takes ~1 s for 151k tokens: done once,
        off the loop, when the first constrained request is validated)."""
        with self._structured_lock:
            if self._structured is None:
                from transformers import AutoTokenizer

                runtime = self.runtime
                # Its own tokenizer instance: a fast tokenizer must not be used from two threads at once.
                tokenizer = AutoTokenizer.from_pretrained(runtime.model_dir)
                self._structured = StructuredOutput(tokenizer, runtime.model.config.vocab_size, runtime.eos_token_ids)
            return self._structured

    def check(self, messages: list[dict], sampling: SamplingParams) -> int:
        """Cheap checks to run before encoding media (InvalidArgument / ResourceExhausted); returns the
        number of media parts the chat needs embeddings for."""
        sampling.validate()
        return self.runtime.prompt_builder.check(messages)

    async def validate(self, messages: list[dict], sampling: SamplingParams) -> int:
        """check(), and a constrained request's grammar compiled (off the loop: a big schema over a real
        vocabulary takes a while; the compiler caches it for the request itself)."""
        num_media = self.check(messages, sampling)
        if (spec := sampling.grammar) is not None:  # a bad one fails here; all of it off the loop
            await asyncio.to_thread(lambda: self.structured.grammar(spec))
        return num_media

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Deltas of the reply; the last one carries finish_reason and usage. Raises InvalidArgument,
        ResourceExhausted, DeadlineExceeded or Unavailable (before or during the stream)."""
        stream = await self._submit(request)
        seq = stream.seq
        try:
            while True:
                item = await self._next_item(stream)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if not seq.is_finished:  # cancelled, closed early, or expired
                self._abort(seq, None)

    async def generate_full(self, request: GenerationRequest) -> GenerationResult:
        """The unary answer: the concatenation of what generate() streams."""
        text, ids, logprobs = [], [], []
        async with contextlib.aclosing(self.generate(request)) as deltas:
            async for delta in deltas:
                text.append(delta.text)
                ids += delta.token_ids
                logprobs += delta.logprobs or []
                if delta.finished:
                    entries = logprobs if request.sampling.logprobs else None
                    return GenerationResult("".join(text), ids, delta.finish_reason, delta.usage, entries)
        raise RuntimeError("the stream ended without a finish reason")

    async def warmup(self) -> None:
        """Run one short text request end to end (before reporting SERVING); leaves the pool full."""
        messages = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
        await self.generate_full(
            GenerationRequest(messages, sampling=SamplingParams(max_new_tokens=2), request_id="warmup")
        )
        if (graphs := self.runner.graphs) is not None:  # captured on the step thread, where they are replayed
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(self._executor, graphs.capture)
            log_event(
                logger,
                "decoder.cuda_graphs_captured",
                buckets=graphs.buckets,
                seconds=round(time.monotonic() - started, 2),
            )

    async def close(self) -> None:
        """Stop: refuse new requests, end the loop, and fail what is left with UNAVAILABLE."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._executor.shutdown, True)  # let an in-flight step finish
        self._prompt_executor.shutdown(wait=False)
        for stream in list(self._streams.values()):
            self._abort(stream.seq, Unavailable("the decoder shut down before the reply finished; retry"))

    # ---- submission and delivery ------------------------------------------------------------------------

    async def _submit(self, request: GenerationRequest) -> RequestStream:
        if self._closing:
            raise Unavailable("the decoder is shutting down; retry on another replica")
        self.check(request.messages, request.sampling)
        loop = asyncio.get_running_loop()
        prompt, grammar = await loop.run_in_executor(self._prompt_executor, self._prepare, request)
        if self._closing:  # closed while the prompt was being built
            raise Unavailable("the decoder is shutting down; retry on another replica")
        seq = new_sequence(next(self._ids), request, prompt, self.runtime, self.config, grammar)
        self.scheduler.add(seq)  # ResourceExhausted when the queue is full
        stream = RequestStream(seq, self.runtime.tokenizer)
        self._streams[seq.seq_id] = stream
        self._ensure_loop()
        self._wakeup.set()
        return stream

    def _prepare(self, request: GenerationRequest):
        """Off the loop: the prompt, and a constrained request's matcher (InvalidArgument for a bad grammar)."""
        spec = request.sampling.grammar
        grammar = None if spec is None else self.structured.matcher(spec)
        return self._build_prompt(request), grammar

    def _build_prompt(self, request: GenerationRequest):
        hidden = self.runtime.hidden_size
        for i, item in enumerate(request.media):
            if item.embeddings.shape[-1] != hidden:
                raise InvalidArgument(
                    f"media item {i} has embeddings of width {item.embeddings.shape[-1]}, but the language model's "
                    f"hidden size is {hidden}: it was encoded for another model"
                )
        prompt = self.runtime.prompt_builder.build(request.messages, request.media)
        if prompt.media_embeddings is not None:
            moved = prompt.media_embeddings.to(self.runtime.device, self.runtime.dtype)
            prompt = dataclasses.replace(prompt, media_embeddings=moved)
        return prompt

    async def _next_item(self, stream: RequestStream):
        if not stream.queue.empty():
            return stream.queue.get_nowait()
        deadline = stream.seq.deadline
        if deadline is None:
            return await stream.queue.get()
        try:
            return await asyncio.wait_for(stream.queue.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._abort(stream.seq, None)
            raise stream.deadline_error() from None

    def _abort(self, seq: Sequence, error: BaseException | None) -> None:
        """Free a sequence that will not finish normally, at once; deliver `error` to its consumer."""
        if not seq.is_finished:
            self.scheduler.finish(seq)
            seq.cancelled = error is None
            log_event(
                logger,
                "decoder.request_aborted",
                request_id=seq.request_id,
                reason=type(error).__name__ if error else "cancelled",
                output_tokens=len(seq.output_ids),
            )
        stream = self._streams.pop(seq.seq_id, None)
        if stream is not None and error is not None:
            stream.queue.put_nowait(error)

    # ---- the loop ---------------------------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="decoder-engine")

    async def _run(self) -> None:
        while True:
            self._expire_deadlines()
            if not self.scheduler.has_work():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not leave every consumer waiting forever
                logger.exception("decoder engine step failed; failing the requests in flight")
                for stream in list(self._streams.values()):
                    self._abort(stream.seq, Unavailable("the decoder failed while running this request; retry"))

    async def _step(self) -> None:
        out = self.scheduler.schedule()
        self._num_preemptions += len(out.preempted)
        for seq in out.preempted:
            log_event(logger, "decoder.preempted", request_id=seq.request_id, output_tokens=len(seq.output_ids))
        if not out.chunks:  # nothing can run yet (cannot happen with the scheduler's checks): do not spin
            await asyncio.sleep(0.001)
            return
        now = time.monotonic()
        for chunk in out.chunks:
            if chunk.seq.first_scheduled_time is None:  # admitted: its time in the queue ends here
                chunk.seq.first_scheduled_time = now
        inputs = self.runner.prepare(out.chunks, [self.block_manager.block_table(c.seq.seq_id) for c in out.chunks])
        sampled = [c.seq for c in out.chunks if c.samples]
        rows = [_sampling_row(seq) for seq in sampled]
        try:
            samples = await asyncio.get_running_loop().run_in_executor(self._executor, self._execute, inputs, rows)
        except Exception as exc:  # a failed model step fails its own requests, never the loop
            logger.exception("decoder model step failed")
            if self.runtime.tp is not None:  # the workers are inside this step's collectives: fatal
                self.runtime.tp.report_failure(f"rank 0's step failed ({type(exc).__name__}: {exc})")
            for chunk in out.chunks:
                error = (
                    exc
                    if isinstance(exc, ServiceError)
                    else Unavailable("the decoder failed to run this request's step; retry")
                )
                self._abort(chunk.seq, error)
            return
        self._num_steps += 1
        logprobs = {seq.seq_id: entry for seq, entry in zip(sampled, samples.logprobs) if entry is not None}
        self._deliver(self.scheduler.update_from_output(out, samples.tokens), logprobs)

    def _execute(self, inputs: StepInputs, rows: list[SamplingRow]) -> StepSamples:
        return sample_step(self.runner.execute(inputs), rows, self._structured)

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        for stream in list(self._streams.values()):
            if stream.seq.deadline is not None and now >= stream.seq.deadline:
                self._abort(stream.seq, stream.deadline_error())

    def _deliver(self, appended: list[SampledToken], logprobs: dict[int, TokenLogprob]) -> None:
        """Turn the step's new tokens into deltas for their consumers; a stop string finishes its sequence."""
        for item in appended:
            seq = item.seq
            stream = self._streams[seq.seq_id]
            entry = logprobs.get(seq.seq_id)
            entry = None if entry is None else self._token_texts.with_texts(entry)
            delta = stream.delta_for(item.token, item.finish_reason, entry)
            if delta.finished:
                if seq.is_finished:
                    seq.finish_reason = delta.finish_reason  # a stop string outranks the length limit
                else:
                    self.scheduler.finish(seq, delta.finish_reason)
                del self._streams[seq.seq_id]
                log_event(
                    logger,
                    "decoder.request_finished",
                    request_id=seq.request_id,
                    finish_reason=delta.finish_reason.value,
                    input_tokens=delta.usage.input_tokens,
                    output_tokens=delta.usage.output_tokens,
                    cached_tokens=delta.usage.cached_tokens,
                    preemptions=seq.num_preemptions,
                )
            stream.queue.put_nowait(delta)


def _bind_device(device) -> None:
    """The step thread's current CUDA device: where Triton launches its kernels and graphs capture."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def _sampling_row(seq: Sequence) -> SamplingRow:
    history = seq.all_token_ids() if seq.sampling.effective_repetition_penalty != 1.0 else None
    return SamplingRow(seq.sampling, seq.generator, history, seq.grammar)
