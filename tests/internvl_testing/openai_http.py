"""Talking to the OpenAI-compatible API in tests: chats with local media as data: URLs, plain HTTP calls."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


def data_url(path: str | Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def openai_messages(chat: list[dict]) -> list[dict]:
    """A Hugging Face chat with local media files as OpenAI messages with data: URLs."""
    out = []
    for message in chat:
        parts = []
        for part in message["content"]:
            if part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": data_url(part["image"], "image/jpeg")}})
            else:
                parts.append({"type": "video_url", "video_url": {"url": data_url(part["video"], "video/mp4")}})
        out.append({"role": message["role"], "content": parts})
    return out


@dataclass
class RawResponse:
    status_code: int
    text: str
    headers: dict[str, str]

    def json(self):
        return json.loads(self.text)


class RawHttp:
    """Plain HTTP requests (no client library between the test and the status line)."""

    def __init__(self, base_url: str, timeout: float = 60):
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port, timeout

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> RawResponse:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            text = response.read().decode()
            return RawResponse(response.status, text, {k.lower(): v for k, v in response.getheaders()})
        finally:
            conn.close()

    def post(self, path: str, json: object = None, content: bytes | None = None, headers: dict | None = None):
        headers = {"content-type": "application/json", **(headers or {})}
        body = content if content is not None else _json_bytes(json)
        return self.request("POST", path, body, headers)

    def get(self, path: str, headers: dict | None = None) -> RawResponse:
        return self.request("GET", path, None, headers)


def _json_bytes(value: object) -> bytes:
    return json.dumps(value).encode()
