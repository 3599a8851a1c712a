"""Building GenerateRequests from Hugging Face chats whose media are local files."""

from __future__ import annotations

from pathlib import Path

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import media_pb2


def _media(part: dict) -> media_pb2.Media:
    if "media_id" in part:
        return media_pb2.Media(media_id=part["media_id"])
    data = Path(part.get(part["type"]) or part.get("url") or part["path"]).read_bytes()
    if part["type"] == "image":
        return media_pb2.Media(image=media_pb2.Image(data=data))
    return media_pb2.Media(video=media_pb2.Video(data=data, num_frames=part.get("num_frames", 0)))


def messages(chat: list[dict]) -> list[pb.Message]:
    out = []
    for message in chat:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = [pb.Part(text=p["text"]) if p["type"] == "text" else pb.Part(media=_media(p)) for p in content]
        out.append(pb.Message(role=message["role"], content=parts))
    return out


def generate_request(chat: list[dict], **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=messages(chat), sampling=pb.SamplingParams(**sampling))


def stream_request(chat: list[dict], **sampling) -> pb.GenerateStreamRequest:
    return pb.GenerateStreamRequest(messages=messages(chat), sampling=pb.SamplingParams(**sampling))
