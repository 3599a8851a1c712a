"""An OpenAI chat-completions request body -> internvl.v1.GenerateRequest, so both APIs run the same servicer.

Media parts become Media protos (bytes from data: URLs, or fetched from allowed hosts by MediaFetcher);
sampling fields map onto SamplingParams with OpenAI's defaults (temperature 1.0 when omitted, so send 0 for
greedy). Fields the engine cannot honour (n > 1, penalties it does not implement, tools) are refused with
a 400 naming them, never silently ignored; bookkeeping fields (user, metadata, store) are accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from internvl_serve.common.errors import InvalidArgument, ResourceExhausted
from internvl_serve.decoder.http.media_fetch import MediaFetcher, MediaFetchError, MediaTooLarge
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import media_pb2

OPENAI_DEFAULT_TEMPERATURE = 1.0
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction")


class MediaTooLargeError(ResourceExhausted):
    """The request's media over --max-request-media-mb: RESOURCE_EXHAUSTED as over gRPC, 413 over HTTP."""


@dataclass
class MediaBudget:
    """What one request's media parts may hold in all, counted before and while they are fetched (the
    servicer checks the same limits, but only after every part is in memory)."""

    max_items: int
    max_bytes: int
    used_bytes: int = 0

    def take(self, data: bytes) -> bytes:
        self.used_bytes += len(data)
        return data

    @property
    def left(self) -> int:
        return max(0, self.max_bytes - self.used_bytes)


@dataclass
class ChatCall:
    """What the HTTP handler needs: the proto request, and the options that shape the HTTP answer."""

    request: pb.GenerateRequest
    stream: bool
    include_usage: bool


def _field(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise InvalidArgument(f"{name} must be a number, got a boolean")
    if not isinstance(value, kinds):
        raise InvalidArgument(f"{name} has the wrong type ({type(value).__name__})")
    return value


def _url(part: dict, key: str, where: str) -> str:
    inner = part.get(key)
    url = inner.get("url") if isinstance(inner, dict) else inner if isinstance(inner, str) else None
    if not isinstance(url, str) or not url:
        raise InvalidArgument(f"{where}.{key}.url is missing: give a data: URL or an http(s) URL")
    return url


async def _media(part: dict, kind: str, where: str, fetcher: MediaFetcher, budget: MediaBudget) -> media_pb2.Media:
    url = _url(part, f"{kind}_url", where)
    too_large = MediaTooLargeError(
        f"{where}.{kind}_url: the request's media are over {budget.max_bytes} bytes in all "
        "(--max-request-media-mb); send fewer or smaller images and videos"
    )
    if budget.left == 0:
        raise too_large
    try:
        data = budget.take(await fetcher.fetch(url, max_bytes=budget.left))
    except MediaTooLarge:
        raise too_large from None
    except MediaFetchError as exc:
        raise InvalidArgument(f"{where}.{kind}_url: {exc}") from None
    if kind == "image":
        return media_pb2.Media(image=media_pb2.Image(data=data))
    return media_pb2.Media(video=media_pb2.Video(data=data))


async def _content(content: Any, where: str, fetcher: MediaFetcher, budget: MediaBudget) -> list[pb.Part]:
    if isinstance(content, str):
        return [pb.Part(text=content)]
    if not isinstance(content, list):
        raise InvalidArgument(f"{where}.content must be a string or a list of content parts")
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"{at}.text must be a string")
            parts.append(pb.Part(text=text))
        elif kind in ("image_url", "video_url"):
            parts.append(pb.Part(media=await _media(part, kind.removesuffix("_url"), at, fetcher, budget)))
        else:
            raise InvalidArgument(f"{at}.type {kind!r} is not supported: use text, image_url or video_url")
    return parts


def _count_media(messages: list) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") in ("image_url", "video_url")
    )


async def _messages(messages: Any, fetcher: MediaFetcher, budget: MediaBudget) -> list[pb.Message]:
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages must be a non-empty list")
    if (count := _count_media(messages)) > budget.max_items:  # before anything is fetched
        raise InvalidArgument(
            f"the request has {count} image/video parts; at most {budget.max_items} are allowed "
            "(--max-media-per-request)"
        )
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidArgument(f"{where} must be an object with role and content")
        role = _ROLES.get(message.get("role"))
        if role is None:
            raise InvalidArgument(f"{where}.role {message.get('role')!r} is not supported: system, user or assistant")
        out.append(pb.Message(role=role, content=await _content(message.get("content", ""), where, fetcher, budget)))
    return out


def _response_format(body: dict) -> str:
    """The JSON schema response_format asks for ("" for plain text)."""
    fmt = body.get("response_format")
    if fmt is None:
        return ""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return ""
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict | bool):
            raise InvalidArgument("response_format.json_schema.schema must be a JSON Schema object")
        return json.dumps(schema)
    raise InvalidArgument(f"response_format.type {kind!r} is not supported: text, json_object or json_schema")


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise InvalidArgument("stop must be a string or a list of strings")


def _refuse_unsupported(body: dict) -> None:
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise InvalidArgument(f"{name} is not supported by this server")
    if _field(body, "n", int, 1) != 1:
        raise InvalidArgument("n must be 1: this server returns one choice per request")
    for name in ("frequency_penalty", "presence_penalty"):
        if _field(body, name, (int, float), 0) != 0:
            raise InvalidArgument(f"{name} is not supported; use repetition_penalty (values > 1 discourage repeats)")
    if body.get("logit_bias"):
        raise InvalidArgument("logit_bias is not supported by this server")


def _top_p(body: dict) -> float:
    top_p = _field(body, "top_p", (int, float), 1.0)
    if not 0 < top_p <= 1:
        raise InvalidArgument(f"top_p must lie in (0, 1], got {top_p}")
    return top_p


def _max_tokens(body: dict) -> int:
    """max_completion_tokens (the current name) or max_tokens; 0 = the server default."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = _field(body, name, int, None)
        if value is not None:
            if value < 1:
                raise InvalidArgument(f"{name} must be >= 1, got {value}")
            return value
    return 0


def _sampling(body: dict) -> pb.SamplingParams:
    logprobs = _field(body, "logprobs", bool, False)
    top_logprobs = _field(body, "top_logprobs", int, 0)
    if top_logprobs and not logprobs:
        raise InvalidArgument("top_logprobs needs logprobs set to true")
    if not 0 <= top_logprobs <= 20:
        raise InvalidArgument(f"top_logprobs must lie in [0, 20], got {top_logprobs}")
    try:
        params = _sampling_proto(body, logprobs, top_logprobs)
    except ValueError as exc:  # protobuf's range check (a number past uint32, say)
        raise InvalidArgument(f"a sampling field is out of range: {exc}") from None
    seed = _field(body, "seed", int, None)
    if seed is not None:
        if not 0 <= seed < 2**64:
            raise InvalidArgument(f"seed must be an unsigned 64-bit integer, got {seed}")
        params.seed = seed
    return params


def _sampling_proto(body: dict, logprobs: bool, top_logprobs: int) -> pb.SamplingParams:
    return pb.SamplingParams(
        max_new_tokens=_max_tokens(body),
        temperature=_field(body, "temperature", (int, float), OPENAI_DEFAULT_TEMPERATURE),
        top_p=_top_p(body),
        top_k=max(0, _field(body, "top_k", int, 0)),  # vLLM's extra; -1 there means no limit
        stop=_stop(body),
        repetition_penalty=_field(body, "repetition_penalty", (int, float), 0.0),
        json_schema=_response_format(body),
        regex=_field(body, "regex", str, ""),  # an extra, as vLLM's structured_outputs.regex
        ignore_eos=_field(body, "ignore_eos", bool, False),  # vLLM's extra (benchmarks)
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


async def chat_call(body: Any, request_id: str, fetcher: MediaFetcher, budget: MediaBudget) -> ChatCall:
    """Validate and convert a request body (a parsed JSON value); InvalidArgument names the field at fault."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    _refuse_unsupported(body)
    sampling = _sampling(body)  # checked before any media is fetched
    stream = _field(body, "stream", bool, False)
    options = _field(body, "stream_options", dict, {})
    messages = await _messages(body.get("messages"), fetcher, budget)
    request = pb.GenerateRequest(messages=messages, sampling=sampling, request_id=request_id)
    return ChatCall(request, stream, bool(options.get("include_usage")))
