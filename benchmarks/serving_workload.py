"""The serving benchmark's workload and its figures, shared by every system it drives.

A request mix modelled on vLLM's serving benchmark, for an image chat service: image chats over a small
pool of images that repeat (encoder and prefix caches can help), second turns about an earlier image (the
first turn's prompt and a fixed answer, then a new question), and text-only chats; each asks for its own
number of output tokens (16-256) with ignore_eos, so every system produces exactly the same token count.
Arrivals are Poisson at a given rate, or all at once. The same seed gives the same requests.
"""

from __future__ import annotations

import base64
import io
import math
import random
import statistics
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

IMAGE_SIZES = [(448, 448), (896, 448), (448, 896), (896, 896)]  # 1, 2+1, 2+1 and 4+1 tiles
QUESTIONS = ["Describe this image.", "What is in the picture?", "Write a haiku for this image.", "Count the objects."]
FOLLOW_UPS = ["What colours stand out?", "Say that again in one line.", "Is there any text in it?"]
TEXT_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a paged KV cache works.",
    "List five uses of a vision-language model.",
    "Summarise the plot of a detective novel.",
]
FIRST_ANSWER = "The image shows a dense pattern of coloured noise, with no clear objects or text in it."
OUTPUT_LENGTHS = [16, 32, 64, 128, 256]


@dataclass(frozen=True)
class ChatRequest:
    """One request: `turns` are (role, text, image index or None), in order."""

    index: int
    turns: tuple[tuple[str, str, int | None], ...]
    max_tokens: int
    arrival_s: float  # offset from the start of the run
    kind: str  # "image", "second turn", "text"


@dataclass
class Outcome:
    """What a client saw of one request: when it was sent, when each token arrived."""

    request: ChatRequest
    sent_s: float = 0.0
    token_times_s: list[float] = field(default_factory=list)  # one entry per output token
    error: str = ""

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0] - self.sent_s

    @property
    def latency_s(self) -> float:
        return self.token_times_s[-1] - self.sent_s

    @property
    def tpot_s(self) -> float:
        n = len(self.token_times_s)
        return (self.token_times_s[-1] - self.token_times_s[0]) / (n - 1) if n > 1 else 0.0


def make_images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def make_requests(num: int, rate: float, seed: int = 0) -> list[ChatRequest]:
    """`rate` requests/s as a Poisson process; math.inf sends them all at once."""
    rng = random.Random(seed)
    requests, now = [], 0.0
    for i in range(num):
        if math.isfinite(rate) and i:
            now += rng.expovariate(rate)
        image = rng.randrange(len(IMAGE_SIZES))
        roll = rng.random()
        if roll < 0.5:
            kind, turns = "image", (("user", rng.choice(QUESTIONS), image),)
        elif roll < 0.75:
            kind = "second turn"
            turns = (
                ("user", rng.choice(QUESTIONS), image),
                ("assistant", FIRST_ANSWER, None),
                ("user", rng.choice(FOLLOW_UPS), None),
            )
        else:
            kind, turns = "text", (("user", rng.choice(TEXT_PROMPTS), None),)
        requests.append(ChatRequest(i, turns, rng.choice(OUTPUT_LENGTHS), now, kind))
    return requests


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarise(outcomes: list[Outcome]) -> dict[str, float]:
    """Output tokens/s over the run, and p50/p90 of TTFT, TPOT, ITL and end-to-end latency (seconds)."""
    done = [o for o in outcomes if o.token_times_s and not o.error]
    start = min(o.sent_s for o in outcomes)
    end = max(o.token_times_s[-1] for o in done)
    itl = [b - a for o in done for a, b in zip(o.token_times_s, o.token_times_s[1:])]
    out = {
        "requests": len(outcomes),
        "failed": len(outcomes) - len(done),
        "output_tokens": sum(len(o.token_times_s) for o in done),
        "duration_s": end - start,
    }
    out["output_tokens_per_s"] = out["output_tokens"] / out["duration_s"]
    for name, values in (
        ("ttft", [o.ttft_s for o in done]),
        ("tpot", [o.tpot_s for o in done if len(o.token_times_s) > 1]),
        ("itl", itl),
        ("latency", [o.latency_s for o in done]),
    ):
        out[f"{name}_p50_s"] = statistics.median(values) if values else float("nan")
        out[f"{name}_p90_s"] = _pct(values, 0.9)
    return out
