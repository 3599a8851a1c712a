"""The shared weight loader: only a service's own tensors, both key layouts, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from internvl_serve.checkpoint import CheckpointError, assign, open_checkpoint


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)


def _hf_reference(hf_model) -> dict[str, torch.Tensor]:
    # transformers' module names are the canonical (hub layout) names
    return dict(hf_model.named_parameters())


@pytest.mark.parametrize("layout_fixture", ["tiny_model_dir", "tiny_model_legacy_dir"])
def test_reads_only_vision_and_projector_tensors(request, layout_fixture, hf_model):
    ckpt = open_checkpoint(request.getfixturevalue(layout_fixture))
    assert ckpt.layout == ("hub" if layout_fixture == "tiny_model_dir" else "legacy")
    state, report = ckpt.load("vision")
    reference = _hf_reference(hf_model)
    expected = {n for n in reference if n.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    assert set(state) == expected
    assert report.tensors_read == len(expected)
    assert len(report.files_opened) < len(set(ckpt.weight_map.values())), "opened shards it did not need"
    for name, tensor in state.items():
        assert torch.equal(tensor, reference[name].detach()), name


@pytest.mark.parametrize("layout_fixture", ["tiny_model_dir", "tiny_model_legacy_dir"])
def test_reads_only_language_model_tensors(request, layout_fixture, hf_model):
    ckpt = open_checkpoint(request.getfixturevalue(layout_fixture))
    state, report = ckpt.load("language", dtype=torch.float32)
    reference = _hf_reference(hf_model)
    expected = {n for n in reference if n.startswith(("model.language_model.", "lm_head."))}
    assert set(state) == expected and report.tensors_read == len(expected)
    assert "lm_head.weight" in state and not torch.equal(
        state["lm_head.weight"], state["model.language_model.embed_tokens.weight"]
    ), "lm_head is untied"
    for name, tensor in state.items():
        assert torch.equal(tensor, reference[name].detach()), name


def test_assign_maps_tensors_onto_a_module(tiny_model_dir, hf_model):
    from transformers import AutoConfig
    from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

    config = AutoConfig.from_pretrained(tiny_model_dir)
    projector = InternVLMultiModalProjector(config)
    state, _ = open_checkpoint(tiny_model_dir).load("vision")
    assign(projector, state, "model.multi_modal_projector.")
    assert torch.equal(projector.linear_1.weight, hf_model.model.multi_modal_projector.linear_1.weight)
    with pytest.raises(CheckpointError, match="missing"):
        assign(projector, {}, "model.multi_modal_projector.")


def test_dtype_conversion(tiny_model_dir):
    state, _ = open_checkpoint(tiny_model_dir).load("vision", dtype=torch.bfloat16)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such directory"):
        open_checkpoint(tmp_path / "missing")


def test_wrong_architecture(tmp_path, tiny_model_dir):
    d = _copy(tiny_model_dir, tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config.update(model_type="llava", architectures=["LlavaForConditionalGeneration"])
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type='llava'.*expected an InternVL3"):
        open_checkpoint(d)


def test_missing_weights(tmp_path, tiny_model_dir):
    d = _copy(tiny_model_dir, tmp_path / "m")
    for f in d.glob("model*"):
        f.unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        open_checkpoint(d)


def test_missing_shard(tmp_path, tiny_model_dir):
    d = _copy(tiny_model_dir, tmp_path / "m")
    sorted(d.glob("*.safetensors"))[-1].unlink()
    with pytest.raises(CheckpointError, match="which is missing"):
        open_checkpoint(d)


def _rewrite_shard(d, edit):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = d / index["weight_map"]["model.multi_modal_projector.linear_1.weight"]
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return index


def test_missing_tensor(tmp_path, tiny_model_dir):
    d = _copy(tiny_model_dir, tmp_path / "m")
    index = _rewrite_shard(d, lambda t: t.pop("model.multi_modal_projector.linear_1.weight"))
    del index["weight_map"]["model.multi_modal_projector.linear_1.weight"]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing.*linear_1.weight"):
        open_checkpoint(d).load("vision")
    open_checkpoint(d).load("language")  # the decoder does not need it


def test_misshapen_tensor(tmp_path, tiny_model_dir):
    d = _copy(tiny_model_dir, tmp_path / "m")

    def shrink(t):
        t["model.multi_modal_projector.linear_1.weight"] = t["model.multi_modal_projector.linear_1.weight"][:-1]

    _rewrite_shard(d, shrink)
    with pytest.raises(CheckpointError, match="linear_1.weight' has shape .* config.json implies"):
        open_checkpoint(d).load("vision")


def test_single_unsharded_file(tmp_path, tiny_model_dir):
    d = _copy(tiny_model_dir, tmp_path / "m")
    merged = {}
    for shard in d.glob("*.safetensors"):
        merged.update(load_file(str(shard)))
        shard.unlink()
    (d / "model.safetensors.index.json").unlink()
    save_file(merged, str(d / "model.safetensors"), metadata={"format": "pt"})
    state, report = open_checkpoint(d).load("vision")
    assert report.files_opened == ["model.safetensors"] and len(state) == report.tensors_read
