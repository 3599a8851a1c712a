"""Reference pixel_values, image features, logits and greedy tokens from transformers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from internvl_serve.oracle.media import collect_media

Conversation = list[dict[str, Any]]


@dataclass
class OracleInputs:
    """What the transformers processor makes of a batch of conversations (left-padded)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    prompts: list[str]

    def as_model_kwargs(self) -> dict[str, torch.Tensor]:
        kwargs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            kwargs["pixel_values"] = self.pixel_values
        return kwargs

    def prompt_ids(self, row: int) -> list[int]:
        """The unpadded prompt token ids of one conversation."""
        mask = self.attention_mask[row].bool()
        return self.input_ids[row][mask].tolist()


class Oracle:
    """Loads a checkpoint with AutoProcessor (torchvision backend) and AutoModelForImageTextToText."""

    def __init__(
        self, model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu", quantization_config=None
    ):
        """`quantization_config`: a transformers BitsAndBytesConfig, loaded as the model card does."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_dir = str(model_dir)
        self.processor = AutoProcessor.from_pretrained(self.model_dir, backend="torchvision")
        self.processor.tokenizer.padding_side = "left"  # batched generate needs left padding
        if quantization_config is None:
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_dir, dtype=dtype).to(device).eval()
        else:  # bitsandbytes places the quantized weights itself (a quantized model cannot be .to()-ed)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.model_dir, dtype=dtype, quantization_config=quantization_config, device_map=device
            ).eval()
        self.dtype = dtype
        self.device = device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prepare(self, conversations: Conversation | list[Conversation]) -> OracleInputs:
        batch = _as_batch(conversations)
        prompts, images, videos, metadata = [], [], [], []
        for conversation in batch:
            prompts.append(self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))
            imgs, vids, meta = collect_media(conversation)
            images += imgs
            videos += vids
            metadata += meta
        kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
            kwargs["video_metadata"] = metadata
        out = self.processor(**kwargs)
        pixel_values = out.get("pixel_values")
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, self.dtype)
        return OracleInputs(
            input_ids=out["input_ids"].to(self.device),
            attention_mask=out["attention_mask"].to(self.device),
            pixel_values=pixel_values,
            prompts=prompts,
        )

    @torch.inference_mode()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected embeddings, [num_tiles, tokens_per_tile, text_hidden]."""
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))
        return out.pooler_output if hasattr(out, "pooler_output") else out

    @torch.inference_mode()
    def logits(self, conversations: Conversation | list[Conversation]) -> torch.Tensor:
        inputs = self.prepare(conversations)
        return self.model(**inputs.as_model_kwargs()).logits

    @torch.inference_mode()
    def generate(self, conversations: Conversation | list[Conversation], max_new_tokens: int = 16) -> list[list[int]]:
        """Greedy new tokens per conversation, stopping at the checkpoint's eos id(s)."""
        inputs = self.prepare(conversations)
        out = self.model.generate(**inputs.as_model_kwargs(), do_sample=False, max_new_tokens=max_new_tokens)
        new = out[:, inputs.input_ids.shape[1] :]
        eos = set(_eos_ids(self.model.generation_config.eos_token_id))
        pad = self.model.generation_config.pad_token_id
        results = []
        for row in new.tolist():
            tokens = []
            for token in row:
                tokens.append(token)
                if token in eos:
                    break
            # generate pads finished rows; a row that ended on eos keeps the eos, as transformers returns it
            results.append([t for i, t in enumerate(tokens) if not (t == pad and i > 0 and tokens[i - 1] in eos)])
        return results

    @torch.inference_mode()
    def greedy_logprobs(self, conversation: Conversation, max_new_tokens: int = 16) -> tuple[list[int], torch.Tensor]:
        """Greedy new tokens (up to and including eos) and the log-softmax of the raw logits at each step,
        [num_tokens, vocab] fp32: what logprobs report."""
        inputs = self.prepare(conversation)
        out = self.model.generate(
            **inputs.as_model_kwargs(),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
        )
        tokens = self.generate(conversation, max_new_tokens)[0]
        logprobs = torch.stack([step[0].float().log_softmax(-1) for step in out.logits[: len(tokens)]])
        return tokens, logprobs

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def _eos_ids(eos: int | list[int] | None) -> list[int]:
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def _as_batch(conversations: Conversation | list[Conversation]) -> list[Conversation]:
    if conversations and isinstance(conversations[0], dict):
        return [conversations]  # type: ignore[list-item]
    return conversations  # type: ignore[return-value]
