"""The serving benchmark's clients: each sends a workload to one system and records when every output token
arrived. Ours over gRPC (GenerateStream), vLLM over its OpenAI API (server-sent events), transformers behind
a static-batching loop in this process. Requests are sent at their arrival times from a thread each."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import torch
from serving_workload import FIRST_ANSWER, ChatRequest, Outcome, data_url

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import media_pb2


def run_open_loop(requests: list[ChatRequest], send) -> list[Outcome]:
    """Send each request at its arrival time (one thread each) with `send(request, outcome)`."""
    outcomes = [Outcome(r) for r in requests]
    start = time.perf_counter()

    def one(outcome: Outcome) -> None:
        delay = start + outcome.request.arrival_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        outcome.sent_s = time.perf_counter()
        try:
            send(outcome.request, outcome)
        except Exception as exc:  # counted as failed, the run goes on
            outcome.error = f"{type(exc).__name__}: {exc}"[:300]

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        list(pool.map(one, outcomes))
    return outcomes


# ---- ours: gRPC --------------------------------------------------------------------------------------------


def grpc_sender(stub, pngs: list[bytes]):
    def send(request: ChatRequest, outcome: Outcome) -> None:
        messages = []
        for role, text, image in request.turns:
            parts = [] if image is None else [pb.Part(media=media_pb2.Media(image=media_pb2.Image(data=pngs[image])))]
            messages.append(pb.Message(role=role, content=[*parts, pb.Part(text=text)]))
        sampling = pb.SamplingParams(max_new_tokens=request.max_tokens, ignore_eos=True)
        for delta in stub.GenerateStream(pb.GenerateStreamRequest(messages=messages, sampling=sampling), timeout=900):
            now = time.perf_counter()
            outcome.token_times_s += [now] * len(delta.token_ids)

    return send


# ---- vLLM: OpenAI chat completions, streamed ---------------------------------------------------------------


def openai_messages(request: ChatRequest, pngs: list[bytes]) -> list[dict]:
    messages = []
    for role, text, image in request.turns:
        content = [] if image is None else [{"type": "image_url", "image_url": {"url": data_url(pngs[image])}}]
        messages.append({"role": role, "content": [*content, {"type": "text", "text": text}]})
    return messages


def openai_sender(base_url: str, model: str, pngs: list[bytes]):
    where = urlsplit(base_url)

    def send(request: ChatRequest, outcome: Outcome) -> None:
        body = {
            "model": model,
            "messages": openai_messages(request, pngs),
            "max_tokens": request.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=900)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            reply = conn.getresponse()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {reply.read()[:300]!r}")
            completion_tokens = None
            while line := reply.readline():
                if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("usage"):
                    completion_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        outcome.token_times_s.append(now)
            if completion_tokens is not None:  # a chunk may carry several tokens: count them at its time
                missing = completion_tokens - len(outcome.token_times_s)
                outcome.token_times_s += [outcome.token_times_s[-1] if outcome.token_times_s else now] * missing
                del outcome.token_times_s[completion_tokens:]
        finally:
            conn.close()

    return send


# ---- transformers: static batching -------------------------------------------------------------------------


class _StepTimes:
    """A generate() streamer that records when each decoding step's tokens were produced."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # the first call is the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_chat(request: ChatRequest, images) -> list[dict]:
    chat = []
    for role, text, image in request.turns:
        content = [] if image is None else [{"type": "image", "image": images[image]}]
        if role == "assistant":
            text = FIRST_ANSWER
        chat.append({"role": role, "content": [*content, {"type": "text", "text": text}]})
    return chat


def run_static_batching(oracle, requests: list[ChatRequest], images, max_batch: int = 8) -> list[Outcome]:
    """A loop a team would write around generate(): take what has arrived (up to max_batch), generate
    until the batch's longest answer is done, repeat. A request's tokens are its row's first max_tokens."""
    outcomes = {r.index: Outcome(r) for r in requests}
    pending = sorted(requests, key=lambda r: r.arrival_s)
    start = time.perf_counter()
    lock = threading.Lock()
    while pending:
        now = time.perf_counter() - start
        if pending[0].arrival_s > now:
            time.sleep(pending[0].arrival_s - now)
            now = time.perf_counter() - start
        with lock:
            batch = [r for r in pending if r.arrival_s <= now][:max_batch]
            pending = [r for r in pending if r not in batch]
        for r in batch:
            outcomes[r.index].sent_s = start + r.arrival_s
        inputs = oracle.prepare([hf_chat(r, images) for r in batch])
        longest = max(r.max_tokens for r in batch)
        steps = _StepTimes()
        with torch.inference_mode():
            oracle.model.generate(
                **inputs.as_model_kwargs(),
                do_sample=False,
                max_new_tokens=longest,
                min_new_tokens=longest,
                streamer=steps,
            )
        for r in batch:
            outcomes[r.index].token_times_s = steps.times[: r.max_tokens]
    return [outcomes[r.index] for r in requests]
