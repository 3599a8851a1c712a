"""internvl.v1 GenerateRequest -> the engine's inputs: Hugging Face chat dicts, the media protos in order,
and SamplingParams. Structural checks live here; the engine checks roles, text and limits."""

from __future__ import annotations

from typing import Any

from internvl_serve.common.errors import InvalidArgument, ResourceExhausted
from internvl_serve.decoder.engine import SamplingParams
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import media_pb2

MAX_REQUEST_ID = 128


def chat_from_proto(messages) -> tuple[list[dict[str, Any]], list[media_pb2.Media]]:
    """Chat dicts with media parts as {"type": "image"|"video"} placeholders, and the media in order."""
    chat: list[dict[str, Any]] = []
    media: list[media_pb2.Media] = []
    for i, message in enumerate(messages):
        parts = []
        for j, part in enumerate(message.content):
            kind = part.WhichOneof("content")
            if kind == "text":
                parts.append({"type": "text", "text": part.text})
            elif kind == "media":
                source = part.media.WhichOneof("source")
                if source is None:
                    raise InvalidArgument(f"messages[{i}].content[{j}].media has none of image, video or media_id set")
                media.append(part.media)
                # A media_id may name an image or a video: the encoder's answer tells which.
                parts.append({"type": "video" if source == "video" else "image"})
            else:
                raise InvalidArgument(f"messages[{i}].content[{j}] is empty: set text or media")
        chat.append({"role": message.role, "content": parts})
    return chat, media


def check_media_bytes(media: list[media_pb2.Media], limit: int) -> None:
    """The request's media bytes in all, against --max-request-media-mb (RESOURCE_EXHAUSTED)."""
    total = sum(len(m.image.data) + len(m.video.data) for m in media)
    if total > limit:
        raise ResourceExhausted(
            f"the request carries {total} media bytes; the limit is {limit} (--max-request-media-mb): send "
            "fewer or smaller images and videos, or encode them first and send media_ids"
        )


def fix_media_types(chat: list[dict[str, Any]], is_video: list[bool]) -> None:
    """Set each media placeholder's type from the encoder's answer (a media_id may be a video)."""
    flags = iter(is_video)
    for message in chat:
        for part in message["content"]:
            if part["type"] in ("image", "video"):
                part["type"] = "video" if next(flags) else "image"


def sampling_from_proto(s: pb.SamplingParams) -> SamplingParams:
    params = SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        ignore_eos=s.ignore_eos,
        repetition_penalty=s.repetition_penalty,
        json_schema=s.json_schema,
        regex=s.regex,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
    )
    params.validate()
    return params


def logprobs_to_proto(entries) -> list[pb.TokenLogprob]:
    """The engine's TokenLogprob entries as internvl.v1.TokenLogprob messages."""
    return [
        pb.TokenLogprob(
            token_id=e.token_id,
            token=e.token,
            logprob=e.logprob,
            token_bytes=e.token_bytes,
            top_logprobs=[
                pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob, token_bytes=t.token_bytes)
                for t in e.top
            ],
        )
        for e in entries or ()
    ]


def check_request_id(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID or not all(32 < ord(c) < 127 for c in request_id):
        raise InvalidArgument(f"request_id must be at most {MAX_REQUEST_ID} printable ASCII characters without spaces")
    return request_id
