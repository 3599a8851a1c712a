"""Bad quantization flags are refused at start with a message naming the flag."""

from __future__ import annotations

import pytest

from internvl_serve.common.quantization import QuantSettings, effective_quant
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.encoder.config import EncoderConfig


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"load_in_4bit": True, "load_in_8bit": True}, "--load-in-4bit and --load-in-8bit exclude each other"),
        ({"quant_type": "nf4"}, "--bnb-4bit-quant-type needs --load-in-4bit"),
        ({"compute_dtype": "bfloat16"}, "--bnb-4bit-compute-dtype needs --load-in-4bit"),
        ({"double_quant": True}, "--bnb-4bit-use-double-quant needs --load-in-4bit"),
        ({"load_in_4bit": True, "quant_type": "int3"}, "fp4 or nf4"),
        ({"load_in_8bit": True, "quant_type": "nf4"}, "--bnb-4bit-quant-type needs --load-in-4bit"),
    ],
)
def test_bad_combinations_name_the_flag(settings, message):
    for config in (EncoderConfig, DecoderConfig):
        with pytest.raises(ValueError, match=message):
            config(model="m", quant=QuantSettings(**settings))


def test_missing_bitsandbytes_names_the_flag(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ValueError, match="--load-in-4bit needs bitsandbytes"):
        DecoderConfig(model="m", quant=QuantSettings(load_in_4bit=True))


def test_a_prequantized_checkpoint_brings_its_settings_and_refuses_other_flags():
    stored = {"load_in_4bit": True, "quant_type": "nf4", "compute_dtype": "float32", "double_quant": True}
    assert effective_quant(QuantSettings(), stored, "ckpt").describe() == "4bit-nf4-float32-double-quant"
    assert effective_quant(QuantSettings(), None, "ckpt").describe() == "none"
    with pytest.raises(ValueError, match="already quantized"):
        effective_quant(QuantSettings(load_in_8bit=True), stored, "ckpt")
