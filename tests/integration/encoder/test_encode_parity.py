"""Embeddings over gRPC equal transformers' get_image_features(...).pooler_output (fp32: within 1e-5)."""

from __future__ import annotations

import torch

from internvl_serve.checkpoint import open_checkpoint
from internvl_testing.encode_requests import embeddings, image, request, video
from internvl_testing.media import image_bytes, noise_image

TOL = 1e-5  # DESIGN.md section 4


def _image_chat(path_or_pil):
    return [{"role": "user", "content": [{"type": "image", "image": path_or_pil}, {"type": "text", "text": "x"}]}]


def _oracle_features(oracle, chat):
    inputs = oracle.prepare(chat)
    return oracle.image_features(inputs.pixel_values).reshape(-1, oracle.model.config.text_config.hidden_size)


def test_loads_only_vision_and_projector_parameters(encoder, tiny_model_dir):
    engine = encoder.server.engine
    specs = open_checkpoint(tiny_model_dir).specs("vision")
    assert engine.num_parameters == sum(torch.Size(s.shape).numel() for s in specs)
    from transformers import AutoConfig, InternVLForConditionalGeneration

    with torch.device("meta"):
        whole = InternVLForConditionalGeneration(AutoConfig.from_pretrained(tiny_model_dir))
    assert engine.num_parameters < sum(p.numel() for p in whole.parameters()) / 2


def test_image_embeddings_match_transformers(encode_stub, oracle, media_dir):
    for name in ("view.jpg", "liberty.jpg", "bridge.jpg"):
        data = (media_dir / name).read_bytes()
        item = encode_stub.Encode(request(image(data))).media[0]
        expected = _oracle_features(oracle, _image_chat(str(media_dir / name)))
        got = embeddings(item)
        assert got.shape == expected.shape
        assert item.num_tokens == expected.shape[0] and item.num_tiles * item.tokens_per_tile == item.num_tokens
        assert (got - expected).abs().max().item() <= TOL, name


def test_png_with_alpha_and_extreme_aspect(encode_stub, oracle):
    pil = noise_image(400, 20, seed=11, mode="RGBA")
    item = encode_stub.Encode(request(image(image_bytes(pil, "PNG")))).media[0]
    expected = _oracle_features(oracle, _image_chat(pil))
    assert (embeddings(item) - expected).abs().max().item() <= TOL


def test_video_embeddings_match_transformers(encode_stub, oracle, media_dir):
    data = (media_dir / "tennis.mp4").read_bytes()
    item = encode_stub.Encode(request(video(data))).media[0]
    chat = [{"role": "user", "content": [{"type": "video", "video": str(media_dir / "tennis.mp4")}]}]
    expected = _oracle_features(oracle, chat)
    assert item.num_frames == 8 and item.num_tiles == 8
    assert (embeddings(item) - expected).abs().max().item() <= TOL
    four = encode_stub.Encode(request(video(data, num_frames=4))).media[0]
    assert four.num_frames == 4 and four.media_id != item.media_id, "frame count is part of the id"
