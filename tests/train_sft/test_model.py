"""Model loading: the tiny base from its config, pretrained paths, and the safety refusals."""
from __future__ import annotations

import json

import pytest
import torch
from train_sft_fixtures import recipe_dict

from tasks.model import UnsafeWeightsError, load_for_inference
from tasks.store import ArtifactStore
from tasks.tokens.tokenizer import build_tokenizer


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_base_model_is_deterministic_from_the_seed(prepared, tmp_path):
    root, recipe, vm, tm = prepared
    a, tok = load_for_inference(root, recipe, tm, None)
    b, _ = load_for_inference(root, recipe, tm, None)
    assert _same(a, b)
    assert a.config.vocab_size == len(tok) and a.config.num_hidden_layers == 1  # train.tiny overrides apply
    other = recipe_dict(tmp_path, seed=4)
    c, _ = load_for_inference(root, other, tm, None)
    assert not _same(a, c)
    assert not a.training


@pytest.fixture
def saved_model(prepared, tmp_path):
    """The tiny base saved with save_pretrained (safetensors) plus its tokenizer: a 'pretrained' model dir."""
    root, recipe, _vm, tm = prepared
    model, tok = load_for_inference(root, recipe, tm, None)
    d = tmp_path / "pretrained"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model


def test_pretrained_path_loads_its_tokenizer_and_safetensors(prepared, saved_model, tmp_path):
    root, _recipe, vm, _tm = prepared
    d, model = saved_model
    recipe = recipe_dict(tmp_path, model=str(d))
    tm = build_tokenizer(root, recipe, vm)
    assert tm["config"]["kind"] == "pretrained"
    loaded, tok = load_for_inference(root, recipe, tm, None)
    assert _same(loaded, model)
    assert tok.chat_template


def test_pickle_weights_are_refused_unless_allowed(prepared, saved_model, tmp_path):
    root, _recipe, vm, _tm = prepared
    d, model = saved_model
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    recipe = recipe_dict(tmp_path, model=str(d))
    tm = build_tokenizer(root, recipe, vm)
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        load_for_inference(root, recipe, tm, None)
    loaded, _ = load_for_inference(root, recipe_dict(tmp_path, model=str(d), allow_unsafe_weights=True), tm, None)
    assert _same(loaded, model)


def test_remote_code_is_refused_unless_the_recipe_allows_it(prepared, saved_model, tmp_path):
    root, _recipe, vm, _tm = prepared
    d, _model = saved_model
    marker = tmp_path / "remote_code_ran"
    (d / "custom_llama.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "custom_llama"
    cfg["auto_map"] = {"AutoConfig": "custom_llama.CustomConfig",
                       "AutoModelForCausalLM": "custom_llama.CustomForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    tm = build_tokenizer(root, recipe_dict(tmp_path, model=str(d)), vm)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_for_inference(root, recipe_dict(tmp_path, model=str(d)), tm, None)
    assert not marker.exists()
    model, _ = load_for_inference(root, recipe_dict(tmp_path, model=str(d), trust_remote_code=True), tm, None)
    assert marker.exists() and type(model).__name__ == "CustomForCausalLM"


def test_tokenizer_step_is_cached_and_trained_on_stage_one(prepared):
    root, recipe, vm, tm = prepared
    again = build_tokenizer(root, recipe, vm)
    assert again["skipped"] and again["key"] == tm["key"]
    assert tm["config"]["sources"] == ["nlp"]
    assert ArtifactStore(root).load("tokenizer", tm["key"]) is not None
