"""Hugging Face chat messages (as in the InternVL3 model card) -> internvl.v1 requests.

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str | [part, ...]}. A part is
{"type": "text", "text": ...}, or {"type": "image"|"video", <source>} where the source is one of the keys
"image"/"video" (the value: path, url, bytes, PIL image, numpy array or frames), "url", "path", "base64", or
"media_id" (an id from encode(), or the EncodedMedia itself). A video part may carry "num_frames".
A batch is a list of conversations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from internvl_serve.clients import media as m
from internvl_serve.clients.errors import InputError
from internvl_serve.clients.fetch import UrlPolicy
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as enc_pb

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", m.IMAGE, m.VIDEO)
_SOURCE_KEYS = {
    m.IMAGE: ("image", "url", "path", "base64", "media_id"),
    m.VIDEO: ("video", "url", "path", "base64", "media_id"),
}


def is_batch(messages: Any) -> bool:
    """True for a list of conversations, False for one conversation (a list of message dicts)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InputError("messages must be a non-empty list of chat messages (or a list of such lists)")
    return all(isinstance(c, Sequence) and not isinstance(c, (str, bytes, dict)) for c in messages)


def to_proto_messages(
    conversation: Sequence[dict[str, Any]], policy: UrlPolicy, num_frames: int = 0
) -> list[pb.Message]:
    """One conversation as Message protos; media are read/fetched/encoded here. `num_frames` is the default
    for video parts without their own "num_frames" (0 = the server's default)."""
    if isinstance(conversation, dict):
        conversation = [conversation]
    if not conversation:
        raise InputError("a conversation needs at least one message")
    return [_message(msg, i, policy, num_frames) for i, msg in enumerate(conversation)]


def _message(msg: Any, i: int, policy: UrlPolicy, num_frames: int) -> pb.Message:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise InputError(f"{where} must be a dict with 'role' and 'content', got {type(msg).__name__}")
    role = msg.get("role")
    if role not in ROLES:
        raise InputError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
    content = msg.get("content")
    if isinstance(content, str):
        return pb.Message(role=role, content=[pb.Part(text=content)])
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, Sequence) or isinstance(content, bytes):
        raise InputError(f"{where}.content must be a string or a list of parts, got {type(content).__name__}")
    parts = [_part(p, f"{where}.content[{j}]", policy, num_frames) for j, p in enumerate(content)]
    return pb.Message(role=role, content=parts)


def _part(part: Any, where: str, policy: UrlPolicy, num_frames: int) -> pb.Part:
    if isinstance(part, str):
        return pb.Part(text=part)
    if not isinstance(part, dict):
        raise InputError(f"{where} must be a dict with a 'type', got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InputError(f"{where} is a text part, so 'text' must be a string, got {type(text).__name__}")
        return pb.Part(text=text)
    if kind in (m.IMAGE, m.VIDEO):
        return pb.Part(media=media_from_part(part, where, policy, num_frames))
    raise InputError(f"{where}.type must be one of {', '.join(PART_TYPES)}, got {kind!r}")


def media_from_part(part: dict[str, Any], where: str, policy: UrlPolicy, num_frames: int = 0) -> media_pb2.Media:
    """The Media proto of an image or video part (`part["type"]` says which)."""
    kind = part["type"]
    keys = [k for k in _SOURCE_KEYS[kind] if part.get(k) is not None]
    if len(keys) != 1:
        found = f"found {', '.join(keys)}" if keys else "found none"
        raise InputError(f"{where} ({kind}) needs exactly one of the keys {', '.join(_SOURCE_KEYS[kind])}; {found}")
    key, value = keys[0], part[keys[0]]
    frames = _num_frames(part.get("num_frames", num_frames), where) if kind == m.VIDEO else 0
    if kind == m.IMAGE and "num_frames" in part:
        raise InputError(f"{where}: num_frames applies to videos only")
    if key == "media_id":
        return media_pb2.Media(media_id=media_id_of(value, where))
    if key == "base64":
        if not isinstance(value, str):
            raise InputError(f"{where}: 'base64' must be a string")
        value = m.decode_base64(value, kind)
    elif key in ("url", "path") and not isinstance(value, (str, bytes)) and not hasattr(value, "__fspath__"):
        raise InputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if kind == m.IMAGE:
        return m.image_media(value, policy)
    return m.video_media(value, policy, frames)


def media_id_of(value: Any, where: str = "media_id") -> str:
    media_id = getattr(value, "media_id", value)  # an EncodedMedia from encode() works as well
    if not isinstance(media_id, str) or not media_id:
        raise InputError(f"{where}: media_id must be a non-empty string, got {media_id!r}")
    return media_id


def _num_frames(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{where}: num_frames must be an integer >= 0 (0 = server default), got {value!r}")
    return value


# --- whole requests ----------------------------------------------------------------------------------------


def generate_request(
    conversation: Sequence[dict[str, Any]],
    sampling: pb.SamplingParams,
    policy: UrlPolicy,
    *,
    request_id: str | None = None,
    num_frames: int = 0,
    stream: bool = False,
) -> pb.GenerateRequest | pb.GenerateStreamRequest:
    kind = pb.GenerateStreamRequest if stream else pb.GenerateRequest
    messages = to_proto_messages(conversation, policy, num_frames)
    return kind(messages=messages, sampling=sampling, request_id=request_id or "")


def encode_request(items: Any, policy: UrlPolicy, *, num_frames: int = 0) -> enc_pb.EncodeRequest:
    """EncodeRequest for one media item or a list of them. An item is a part dict ({"type": "image", ...}),
    a media reference (an EncodedMedia or {"media_id": ...}), or a bare value whose kind is guessed: a
    path/url/bytes by the file's signature, a PIL image as an image, a 4-D array or list of frames as a video.
    """
    if not isinstance(items, list):
        items = [items]
    if not items:
        raise InputError("encode() needs at least one media item")
    return enc_pb.EncodeRequest(media=[_encode_item(x, f"media[{i}]", policy, num_frames) for i, x in enumerate(items)])


def _encode_item(item: Any, where: str, policy: UrlPolicy, num_frames: int) -> media_pb2.Media:
    if isinstance(item, dict) and item.get("type") in (m.IMAGE, m.VIDEO):
        return media_from_part(item, where, policy, num_frames)
    if isinstance(item, dict) and "media_id" in item:
        return media_pb2.Media(media_id=media_id_of(item["media_id"], where))
    if isinstance(item, dict):
        raise InputError(f"{where}: a dict item needs 'type' image or video, or a 'media_id'")
    if hasattr(item, "media_id"):
        return media_pb2.Media(media_id=media_id_of(item, where))
    data = m.source_bytes(item, "media", policy)
    kind = m.guess_kind(item, data)
    value = data if data is not None else item
    if kind == m.IMAGE:
        return m.image_media(value, policy)
    return m.video_media(value, policy, _num_frames(num_frames, where))
