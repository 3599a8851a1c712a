"""internvl.v1 replies -> OpenAI chat-completions JSON: the whole completion, stream chunks, errors."""

from __future__ import annotations

import time
from typing import Any

import grpc

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb

_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}

# gRPC status -> (HTTP status, OpenAI error type)
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def error_body(status: grpc.StatusCode, message: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    """OpenAI's error JSON and its HTTP status for a gRPC status."""
    http_status, kind = _HTTP_STATUS.get(status, (500, "internal_error"))
    return http_status, {"error": {"message": message, "type": kind, "param": param, "code": status.name.lower()}}


def _top(entry) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token_bytes)}


def logprobs_json(entries) -> dict[str, Any] | None:
    """OpenAI's choice.logprobs: one object per token, with its top_logprobs."""
    if not entries:
        return None
    return {"content": [{**_top(e), "top_logprobs": [_top(t) for t in e.top_logprobs]} for e in entries]}


def usage_json(usage: pb.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def completion_json(reply: pb.GenerateResponse, want_logprobs: bool) -> dict[str, Any]:
    return {
        "id": completion_id(reply.request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "logprobs": logprobs_json(reply.logprobs) if want_logprobs else None,
                "finish_reason": _FINISH.get(reply.finish_reason),
            }
        ],
        "usage": usage_json(reply.usage),
    }


class ChunkWriter:
    """The chunks of one streamed completion (all with the same id and created time)."""

    def __init__(self, request_id: str, model: str, want_logprobs: bool):
        self.id = completion_id(request_id)
        self.created = int(time.time())
        self.model = model
        self.want_logprobs = want_logprobs
        self.sent_role = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return {**base, "choices": choices, **extra}

    def delta(self, msg: pb.GenerateStreamResponse) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": msg.text}
        if not self.sent_role:  # OpenAI's first chunk names the role
            delta = {"role": "assistant", **delta}
            self.sent_role = True
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": logprobs_json(msg.logprobs) if self.want_logprobs else None,
            "finish_reason": _FINISH.get(msg.finish_reason),
        }
        return self._chunk([choice])

    def usage(self, usage: pb.Usage) -> dict[str, Any]:
        """stream_options.include_usage: a last chunk with no choices and the whole call's usage."""
        return self._chunk([], usage=usage_json(usage))
