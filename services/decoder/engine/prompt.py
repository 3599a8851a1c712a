"""Prompt token ids from chat messages, identical to transformers' InternVLProcessor, without it.

The checkpoint's chat template renders the chat (with a generation prompt); the template emits one
`<IMG_CONTEXT>` per image part and one `<video>` per video part. Each is replaced as the processor does:
an image by `<img>` + `<IMG_CONTEXT>` x (tokens_per_tile * num_tiles) + `</img>`, a video by one line
`Frame{k}: <img>` + `<IMG_CONTEXT>` x tokens_per_tile + `</img>` per frame, joined by newlines. The
tile/frame counts come from the encoder's answer (MediaEmbedding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from internvl_serve.common.errors import InvalidArgument
from internvl_serve.decoder.engine.media import MediaEmbedding

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "image", "video")


@dataclass(frozen=True)
class MediaTokens:
    """The tokenizer's media special tokens (InternVL3 names them in tokenizer_config.json)."""

    start_image: str = "<img>"
    end_image: str = "</img>"
    context_image: str = "<IMG_CONTEXT>"
    video: str = "<video>"

    @classmethod
    def of(cls, tokenizer) -> "MediaTokens":
        default = cls()
        return cls(
            start_image=getattr(tokenizer, "start_image_token", None) or default.start_image,
            end_image=getattr(tokenizer, "end_image_token", None) or default.end_image,
            context_image=getattr(tokenizer, "context_image_token", None) or default.context_image,
            video=getattr(tokenizer, "video_token", None) or default.video,
        )

    def all(self) -> tuple[str, ...]:
        return (self.start_image, self.end_image, self.context_image, self.video)


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    media_positions: list[int]  # positions of the <IMG_CONTEXT> tokens, ascending
    media_embeddings: torch.Tensor | None  # [len(media_positions), hidden], media rows in prompt order
    media_items: list[tuple[bytes, int]] = field(default_factory=list)  # (content hash, rows) per item


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    return []


def check_messages(messages: list[dict[str, Any]], tokens: MediaTokens, max_media: int) -> int:
    """Validate the chat's shape; returns the number of media parts. Cheap: run it before encoding media."""
    if not messages:
        raise InvalidArgument("messages is empty: send at least one message")
    num_media = 0
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role is {role!r}; it must be one of {', '.join(ROLES)}")
        parts = _parts(message)
        if not parts or all(p.get("type") == "text" and not p.get("text") for p in parts):
            raise InvalidArgument(f"messages[{i}] ({role}) has empty content: give it text or media")
        for j, part in enumerate(parts):
            kind = part.get("type")
            if kind not in PART_TYPES:
                raise InvalidArgument(
                    f"messages[{i}].content[{j}] has type {kind!r}; it must be one of {', '.join(PART_TYPES)}"
                )
            if kind != "text":
                num_media += 1
                continue
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"messages[{i}].content[{j}].text must be a string")
            for token in tokens.all():
                if token in text:
                    raise InvalidArgument(
                        f"messages[{i}].content[{j}] contains the media token {token!r}; send images and videos "
                        "as media parts, not as special tokens in text"
                    )
    if num_media > max_media:
        raise InvalidArgument(f"the request has {num_media} media items; at most {max_media} are allowed per request")
    return num_media


def _template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them, with media payloads dropped (only the type matters)."""
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                {"type": "text", "text": p["text"]} if p["type"] == "text" else {"type": p["type"]} for p in content
            ]
        out.append({"role": message["role"], "content": content})
    return out


class PromptBuilder:
    """Chat + media embeddings -> prompt token ids and where the embeddings go."""

    def __init__(self, tokenizer, max_media: int):  # DecoderConfig.max_media_per_request
        self.tokenizer = tokenizer
        self.max_media = max_media
        self.tokens = MediaTokens.of(tokenizer)
        self.context_image_id = tokenizer.convert_tokens_to_ids(self.tokens.context_image)
        self._placeholder = re.compile(f"({re.escape(self.tokens.context_image)})|({re.escape(self.tokens.video)})")

    def check(self, messages: list[dict[str, Any]]) -> int:
        return check_messages(messages, self.tokens, self.max_media)

    def render(self, messages: list[dict[str, Any]], media: list[MediaEmbedding]) -> str:
        """The prompt text with every media placeholder expanded."""
        num_media = self.check(messages)
        if num_media != len(media):
            raise ValueError(f"the chat has {num_media} media parts but {len(media)} media embeddings were given")
        text = self.tokenizer.apply_chat_template(
            _template_messages(messages), add_generation_prompt=True, tokenize=False
        )
        items = iter(media)

        def expand(match: re.Match) -> str:
            item = next(items, None)
            kind = "image" if match.group(1) else "video"
            if item is None or item.media_type != kind:
                raise ValueError(
                    f"the chat template emitted a {kind} placeholder where the media list has "
                    f"{item and item.media_type}"
                )
            return self._expansion(item)

        expanded = self._placeholder.sub(expand, text)
        if next(items, None) is not None:
            raise ValueError("the chat template emitted fewer media placeholders than the chat has media parts")
        return expanded

    def _expansion(self, item: MediaEmbedding) -> str:
        t = self.tokens
        if item.media_type == "image":
            return f"{t.start_image}{t.context_image * item.num_tokens}{t.end_image}"
        tile = f"{t.start_image}{t.context_image * item.tokens_per_tile}{t.end_image}"
        return "\n".join(f"Frame{k + 1}: {tile}" for k in range(item.num_frames))

    def build(self, messages: list[dict[str, Any]], media: list[MediaEmbedding]) -> Prompt:
        token_ids = self.tokenizer(self.render(messages, media))["input_ids"]
        positions = [i for i, t in enumerate(token_ids) if t == self.context_image_id]
        expected = sum(m.num_tokens for m in media)
        if len(positions) != expected:
            raise ValueError(
                f"the prompt has {len(positions)} {self.tokens.context_image} tokens, the media {expected}"
            )
        embeddings = torch.cat([m.embeddings for m in media]) if media else None
        items = [(m.identity(), m.num_tokens) for m in media]
        return Prompt(token_ids=token_ids, media_positions=positions, media_embeddings=embeddings, media_items=items)
