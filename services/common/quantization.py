"""bitsandbytes weights (--load-in-4bit, --load-in-8bit), quantized at load time with bitsandbytes' own
Params4bit / Int8Params, the same layers transformers quantizes (every nn.Linear but lm_head), so the
packed weights and outputs equal transformers' BitsAndBytesConfig model bit for bit.

A checkpoint saved already quantized (config.json `quantization_config`) brings its own settings
(checkpoint/prequantized.py, `effective_quant`). On CUDA the same layers run bitsandbytes' CUDA kernels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from internvl_serve.common.config_fields import setting

LLM_INT8_THRESHOLD = 6.0  # BitsAndBytesConfig's llm_int8_threshold: outlier features past it stay in fp16
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class QuantSettings:
    load_in_4bit: bool = setting(
        False, "quantize the Linear layers to 4 bits (bitsandbytes)", flag="--load-in-4bit", env="INTERNVL_LOAD_IN_4BIT"
    )
    load_in_8bit: bool = setting(
        False, "quantize the Linear layers to 8 bits (bitsandbytes LLM.int8)", flag="--load-in-8bit"
    )
    quant_type: str | None = setting(
        None,
        "4-bit data type, fp4 or nf4 (default fp4, as BitsAndBytesConfig)",
        flag="--bnb-4bit-quant-type",
        env="INTERNVL_BNB_4BIT_QUANT_TYPE",
        parse=lambda text: text or None,  # an empty variable (compose's default) means the default
    )
    compute_dtype: str | None = setting(
        None, "dtype of the 4-bit matmuls (default float32, as BitsAndBytesConfig)", flag="--bnb-4bit-compute-dtype"
    )
    double_quant: bool = setting(False, "quantize the 4-bit scales too", flag="--bnb-4bit-use-double-quant")

    @property
    def enabled(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit

    def describe(self) -> str:
        """For logs and cache keys: "none", "int8", or "4bit-nf4-float32[-double-quant]"."""
        if self.load_in_8bit:
            return "int8"
        if not self.load_in_4bit:
            return "none"
        double = "-double-quant" if self.double_quant else ""
        return f"4bit-{self.quant_type or 'fp4'}-{self.compute_dtype or 'float32'}{double}"

    def problems(self) -> list[str]:
        out = []
        if self.load_in_4bit and self.load_in_8bit:
            out.append("--load-in-4bit and --load-in-8bit exclude each other")
        four_bit_only = {
            "--bnb-4bit-quant-type": self.quant_type,
            "--bnb-4bit-compute-dtype": self.compute_dtype,
            "--bnb-4bit-use-double-quant": self.double_quant or None,
        }
        for flag, value in four_bit_only.items():
            if value is not None and not self.load_in_4bit:
                out.append(f"{flag} needs --load-in-4bit")
        if self.quant_type not in (None, "fp4", "nf4"):
            out.append(f"--bnb-4bit-quant-type must be fp4 or nf4, got {self.quant_type!r}")
        if self.compute_dtype not in (None, *_DTYPES):
            out.append(f"--bnb-4bit-compute-dtype must be one of {sorted(_DTYPES)}, got {self.compute_dtype!r}")
        if self.enabled and importlib.util.find_spec("bitsandbytes") is None:
            flag = "--load-in-4bit" if self.load_in_4bit else "--load-in-8bit"
            out.append(f"{flag} needs bitsandbytes, which is not installed: pip install 'internvl-serve[quant]'")
        return out


def effective_quant(flags: QuantSettings, checkpoint: dict[str, Any] | None, where: str) -> QuantSettings:
    """The flags, or a pre-quantized checkpoint's own settings (it loads as it is, without flags)."""
    if checkpoint is None:
        return flags
    stored = QuantSettings(**checkpoint)
    if flags.enabled and flags != stored:
        raise ValueError(
            f"{where} is already quantized ({stored.describe()}, from config.json); drop the quantization flags"
        )
    return stored


def _bnb() -> Any:
    try:
        import bitsandbytes
    except ImportError:
        raise ValueError("--load-in-4bit/--load-in-8bit need bitsandbytes: pip install bitsandbytes") from None
    return bitsandbytes


def quantize_linears(module: nn.Module, settings: QuantSettings, skip: tuple[nn.Module, ...] = ()) -> int:
    """Replace every nn.Linear under `module` (but `skip`) by bitsandbytes' layer, in place; how many."""
    bnb = _bnb()
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear and not any(child is s for s in skip):
            setattr(module, name, _quantized(bnb, child, settings))
            count += 1
        else:
            count += quantize_linears(child, settings, skip)
    return count


def _quantized(bnb, linear: nn.Linear, s: QuantSettings) -> nn.Module:
    device = linear.weight.device
    weight = linear.weight.detach()
    if s.load_in_8bit:
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            has_fp16_weights=False,
            threshold=LLM_INT8_THRESHOLD,
        )
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False).to(device)
    else:
        quant_type = s.quant_type or "fp4"
        compute = _DTYPES[s.compute_dtype or "float32"]
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute,
            compress_statistics=s.double_quant,
            quant_type=quant_type,
            device=device,
        )
        params = bnb.nn.Params4bit(
            weight.clone(), requires_grad=False, compress_statistics=s.double_quant, quant_type=quant_type
        )
        layer.weight = params.to(device)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer.train(linear.training)  # LLM.int8 computes differently in training mode
