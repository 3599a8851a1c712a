"""bitsandbytes weights through the real encoder and decoder equal transformers' model loaded as the model
card loads it (BitsAndBytesConfig(load_in_4bit=True), and nf4): greedy tokens for the card's chats, alone
and concurrently, and the encoder's embeddings equal get_image_features. Pre-quantized checkpoints load as
they are, without flags."""

from __future__ import annotations

import concurrent.futures
import dataclasses

import pytest
import torch

from internvl_serve.common.quantization import QuantSettings
from internvl_testing.decoder_server import decoder_config, generation_stub, start_decoder
from internvl_testing.encode_requests import embeddings, image, request
from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder
from internvl_testing.generate_requests import generate_request

MAX_NEW = 12
NAMES = ["text only", "one image", "several images", "video"]


def _bnb_config(**kwargs):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**kwargs)


class Stack:
    def __init__(self, model_dir, quant: QuantSettings):
        self.encoder = start_encoder(dataclasses.replace(encoder_config(model_dir, None), quant=quant))
        self.decoder = start_decoder(decoder_config(model_dir, [self.encoder.address], quant=quant))
        self.channel, self.stub = generation_stub(self.decoder.address)

    def generate(self, chat) -> list[int]:
        return list(self.stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW), timeout=120).token_ids)

    def close(self):
        self.channel.close()
        self.decoder.close()
        self.encoder.close()


# (our flags, transformers' BitsAndBytesConfig): the card's default (fp4) and nf4.
VARIANTS = {
    "fp4 (the card's BitsAndBytesConfig(load_in_4bit=True))": (
        QuantSettings(load_in_4bit=True),
        {"load_in_4bit": True},
    ),
    "nf4": (
        QuantSettings(load_in_4bit=True, quant_type="nf4"),
        {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    ),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tiny_model_dir):
    from internvl_serve.oracle import Oracle

    quant, bnb = VARIANTS[request.param]
    oracle = Oracle(tiny_model_dir, quantization_config=_bnb_config(**bnb))
    stack = Stack(tiny_model_dir, quant)
    yield oracle, stack
    stack.close()


def test_greedy_tokens_equal_transformers_4bit(variant, model_card_chats):
    oracle, stack = variant
    for name in NAMES:
        assert stack.generate(model_card_chats[name]) == oracle.generate(model_card_chats[name], MAX_NEW)[0], name


def test_the_cards_chats_sent_concurrently_equal_transformers_4bit(variant, model_card_chats):
    oracle, stack = variant
    expected = {name: oracle.generate(model_card_chats[name], MAX_NEW)[0] for name in NAMES}
    with concurrent.futures.ThreadPoolExecutor(len(NAMES)) as pool:
        got = dict(zip(NAMES, pool.map(lambda n: stack.generate(model_card_chats[n]), NAMES)))
    assert got == expected


def test_embeddings_equal_transformers_4bit_image_features(variant, model_card_chats, media_dir):
    oracle, stack = variant
    pixel_values = oracle.prepare(model_card_chats["one image"]).pixel_values
    want = oracle.image_features(pixel_values).reshape(-1, oracle.model.config.text_config.hidden_size)
    channel, enc = encoder_stub(stack.encoder.address)
    try:
        reply = enc.Encode(request(image((media_dir / "view.jpg").read_bytes())), timeout=60)
    finally:
        channel.close()
    got = embeddings(reply.media[0])
    assert got.shape == want.shape and torch.allclose(got, want.to(got.dtype), atol=1e-5, rtol=0)


def test_quantized_and_full_precision_answers_differ(variant, oracle, model_card_chats):
    """The parity above is not the fp32 model's by accident: 4-bit greedy tokens differ from fp32's."""
    _, stack = variant
    chat = model_card_chats["one image"]
    assert stack.generate(chat) != oracle.generate(chat, MAX_NEW)[0]


def test_8bit_text_chat_equals_transformers_8bit(tiny_model_dir, model_card_chats):
    from internvl_serve.oracle import Oracle

    oracle = Oracle(tiny_model_dir, quantization_config=_bnb_config(load_in_8bit=True))
    decoder = start_decoder(decoder_config(tiny_model_dir, [], quant=QuantSettings(load_in_8bit=True)))
    channel, stub = generation_stub(decoder.address)
    try:
        chat = model_card_chats["text only"]
        reply = stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW), timeout=120)
        assert list(reply.token_ids) == oracle.generate(chat, MAX_NEW)[0]
    finally:
        channel.close()
        decoder.close()


@pytest.mark.parametrize("double_quant", [False, True])
def test_a_prequantized_checkpoint_loads_as_it_is(tiny_model_dir, model_card_chats, tmp_path, double_quant):
    """What a published "-bnb-4bit" repository holds: transformers' save_pretrained of its 4-bit model."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from internvl_serve.oracle import Oracle

    bnb = _bnb_config(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant)
    quantized = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, quantization_config=bnb, device_map="cpu")
    saved = tmp_path / "tiny-bnb-4bit"
    quantized.save_pretrained(saved)
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(saved)
    oracle = Oracle(saved)  # transformers reads the quantization_config from config.json
    stack = Stack(saved, QuantSettings())  # and so do we: no flags
    try:
        for name in ("text only", "one image"):
            assert stack.generate(model_card_chats[name]) == oracle.generate(model_card_chats[name], MAX_NEW)[0]
        assert stack.decoder.server.engine is not None
    finally:
        stack.close()
