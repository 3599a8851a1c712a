"""LoadedModel: what is loaded once per process (weights, tokenizer, stopping ids, context length)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from internvl_serve.checkpoint import CheckpointError, open_checkpoint
from internvl_serve.common.logs import log_event
from internvl_serve.common.quantization import effective_quant
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.engine.prompt import PromptBuilder
from internvl_serve.decoder.engine.qwen2 import Qwen2ForCausalLM

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    config: DecoderConfig
    model: Qwen2ForCausalLM
    tokenizer: object  # a transformers tokenizer, for detokenizing (used on the engine's loop only)
    prompt_builder: PromptBuilder  # with its own tokenizer instance
    eos_token_ids: frozenset[int]
    context_len: int  # prompt + generated tokens
    device: torch.device
    dtype: torch.dtype
    model_name: str  # as given to --model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size


def eos_token_ids(model_dir: Path, text_config, tokenizer) -> frozenset[int]:
    """The ids transformers' generate stops on: generation_config.json's eos_token_id (one id or a list),
    else the text config's, else the tokenizer's."""
    candidates = []
    gen_file = model_dir / "generation_config.json"
    if gen_file.is_file():
        try:
            candidates.append(json.loads(gen_file.read_text()).get("eos_token_id"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{gen_file}: not valid JSON ({exc})") from exc
    candidates += [getattr(text_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    for value in candidates:
        if value is None or value == []:
            continue
        return frozenset([value] if isinstance(value, int) else (int(v) for v in value))
    raise CheckpointError(f"{model_dir}: no eos_token_id in generation_config.json, config.json or the tokenizer")


def load_model(config: DecoderConfig) -> LoadedModel:
    """Open the checkpoint and load only the language model, lm_head and tokenizer."""
    from transformers import AutoTokenizer

    ckpt = open_checkpoint(config.model)
    device, dtype = config.torch_device(), config.torch_dtype()
    text_config = ckpt.config.get_text_config()
    max_positions = text_config.max_position_embeddings
    context_len = config.max_context_len or max_positions
    if context_len > max_positions:
        raise ValueError(
            f"--max-context-len {context_len} exceeds the model's max_position_embeddings ({max_positions}); "
            "longer contexts would need RoPE scaling this decoder does not implement"
        )
    quant = effective_quant(config.quant, ckpt.quantization, str(ckpt.path))
    model = Qwen2ForCausalLM.from_checkpoint(ckpt, dtype=dtype, device=device, quant=quant)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt.path))  # detokenizing, on the engine's loop
    prompt_tokenizer = AutoTokenizer.from_pretrained(str(ckpt.path))  # prompt building, in its own thread
    runtime = LoadedModel(
        config=config,
        model=model,
        tokenizer=tokenizer,
        prompt_builder=PromptBuilder(prompt_tokenizer, max_media=config.max_media_per_request),
        eos_token_ids=eos_token_ids(ckpt.path, text_config, tokenizer),
        context_len=context_len,
        device=device,
        dtype=dtype,
        model_name=config.model,
    )
    log_event(
        logger,
        "decoder.model_loaded",
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        layers=text_config.num_hidden_layers,
        hidden=text_config.hidden_size,
        context_len=context_len,
        quantization=quant.describe(),
        weight_mib=round(weight_bytes(model) / 2**20, 1),
    )
    return runtime


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights hold on the device (packed 4-bit weights count as stored), statistics included."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
