"""LoadedModel: what is loaded once per process (weights, tokenizer, stopping ids, context length)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from internvl_serve.checkpoint import CheckpointError, open_checkpoint
from internvl_serve.common.logs import log_event
from internvl_serve.common.quantization import effective_quant
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.engine.kv_cache import KVCacheSpec, num_kv_blocks
from internvl_serve.decoder.engine.prompt import PromptBuilder
from internvl_serve.decoder.engine.qwen2 import Qwen2ForCausalLM
from internvl_serve.decoder.engine.tensor_parallel import TPShard, tp_problems
from internvl_serve.decoder.engine.tp_workers import TPWorkers, init_group, rank_device, rank_threads

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
    model_dir: str = ""  # the checkpoint's local directory (a hub id resolved)
    tp: Any = None  # TPWorkers (ranks 1..N-1) with --tensor-parallel-size N > 1; this process is rank 0
    tp_max_blocks: int | None = None  # the fewest KV blocks a worker rank can hold

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


def tensor_parallel_problems(config: DecoderConfig) -> list[str]:
    """What stops --tensor-parallel-size N for this checkpoint and machine (checked before loading)."""
    size = config.tensor_parallel_size
    if size == 1:
        return []
    problems = tp_problems(open_checkpoint(config.model).config.get_text_config(), size)
    if config.quant.enabled:
        problems.append("--tensor-parallel-size > 1 cannot be combined with --load-in-4bit/--load-in-8bit")
    device = config.torch_device()
    if device.type == "cuda" and (device.index or 0) + size > torch.cuda.device_count():
        problems.append(
            f"--tensor-parallel-size {size} needs {size} GPUs from {device}, found {torch.cuda.device_count()}"
        )
    return problems


def load_shard(config: DecoderConfig, shard: TPShard) -> tuple[Qwen2ForCausalLM, KVCacheSpec, int]:
    """A worker rank's part: its shard of the language model, its KV-cache shape, the blocks it can hold."""
    ckpt = open_checkpoint(config.model)
    device, dtype = rank_device(config, shard.rank), config.torch_dtype()
    quant = effective_quant(config.quant, ckpt.quantization, str(ckpt.path))
    model = Qwen2ForCausalLM.from_checkpoint(ckpt, dtype=dtype, device=device, quant=quant, shard=shard)
    spec = KVCacheSpec.for_model(model.config, config.block_size, dtype, model.num_local_kv_heads)
    return model, spec, num_kv_blocks(config, spec, device)


def load_model(config: DecoderConfig) -> LoadedModel:
    """Open the checkpoint and load only the language model, lm_head and tokenizer (with N ranks: start
    the N-1 worker processes, join their group, load rank 0's shard and wait for theirs)."""
    workers, shard = None, TPShard()
    if config.tensor_parallel_size > 1:
        workers = TPWorkers(config)
        try:
            shard = init_group(config, 0, workers.init_method)
        except BaseException:
            workers.close()
            raise
        if config.torch_device().type == "cpu":
            torch.set_num_threads(rank_threads(config))
    try:
        runtime = _load(config, shard)
        if workers is not None:
            runtime.tp, runtime.tp_max_blocks = workers, workers.wait_loaded()
        return runtime
    except BaseException:
        if workers is not None:
            workers.close()
        raise


def _load(config: DecoderConfig, shard: TPShard) -> LoadedModel:
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
    model = Qwen2ForCausalLM.from_checkpoint(ckpt, dtype=dtype, device=device, quant=quant, shard=shard)
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
        model_dir=str(ckpt.path),
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
        tensor_parallel_size=shard.size,
        weight_mib=round(weight_bytes(model) / 2**20, 1),  # this rank's
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
