"""transformers loads what make-tiny-model wrote and generates for the model card's kinds of chat."""

from __future__ import annotations

import torch

from internvl_testing.media import noise_image


def _chat(*parts):
    return [{"role": "user", "content": list(parts)}]


def _text(t):
    return {"type": "text", "text": t}


def test_text_only(oracle):
    tokens = oracle.generate(_chat(_text("Write a haiku")), max_new_tokens=8)
    assert len(tokens) == 1 and len(tokens[0]) >= 1
    prompt = oracle.prepare(_chat(_text("Write a haiku"))).prompts[0]
    assert prompt == "<|im_start|>user\nWrite a haiku<|im_end|>\n<|im_start|>assistant\n"


def test_one_image_tiles_and_context_tokens(oracle, media_dir):
    chat = _chat(
        {"type": "image", "image": str(media_dir / "view.jpg")}, _text("Please describe the image explicitly.")
    )
    inputs = oracle.prepare(chat)
    tiles = inputs.pixel_values.shape[0]
    assert tiles > 1, "a 200x120 image on 64px tiles is split into several tiles plus a thumbnail"
    assert inputs.pixel_values.shape[1:] == (3, 64, 64)
    image_token = oracle.model.config.image_token_id
    assert int((inputs.input_ids == image_token).sum()) == tiles * 16
    features = oracle.image_features(inputs.pixel_values)
    assert features.shape == (tiles, 16, oracle.model.config.text_config.hidden_size)
    assert oracle.generate(chat, max_new_tokens=8)[0]


def test_several_images_and_video(oracle, media_dir):
    images = _chat(
        {"type": "image", "url": str(media_dir / "liberty.jpg")},
        {"type": "image", "url": str(media_dir / "bridge.jpg")},
        _text("These images depict two different landmarks. Can you identify them?"),
    )
    video = _chat(
        {"type": "video", "video": str(media_dir / "tennis.mp4")}, _text("What type of shot is the man performing?")
    )
    v_inputs = oracle.prepare(video)
    assert v_inputs.pixel_values.shape[0] == 8, "8 frames sampled by default, one tile each"
    assert "Frame8: <img>" in oracle.tokenizer.decode(v_inputs.input_ids[0])
    for chat in (images, video):
        assert oracle.generate(chat, max_new_tokens=8)[0]


def test_batch_equals_one_by_one(oracle, media_dir):
    chats = [
        _chat({"type": "image", "image": str(media_dir / "view.jpg")}, _text("Write a haiku for this image")),
        _chat({"type": "video", "video": str(media_dir / "tennis.mp4")}, _text("What type of shot?")),
        _chat(_text("Write a haiku")),
    ]
    batched = oracle.generate(chats, max_new_tokens=6)
    assert batched == [oracle.generate(c, max_new_tokens=6)[0] for c in chats]


def test_tiny_checkpoint_is_input_sensitive(oracle):
    """Different images and prompts must give different greedy answers (DESIGN.md section 4)."""
    answers = set()
    for seed in range(4):
        chat = _chat({"type": "image", "image": noise_image(120, 80, seed)}, _text("Describe this image."))
        answers.add(tuple(oracle.generate(chat, max_new_tokens=6)[0]))
    assert len(answers) == 4
    prompts = {tuple(oracle.generate(_chat(_text(p)), max_new_tokens=6)[0]) for p in ("cat", "dog", "a bridge")}
    assert len(prompts) == 3


def test_logits_shape_and_determinism(oracle):
    chat = _chat(_text("hello"))
    a, b = oracle.logits(chat), oracle.logits(chat)
    assert a.shape[-1] == oracle.model.config.text_config.vocab_size
    assert torch.equal(a, b)
