"""Model weights on disk: safetensors + model.json round trip, run-folder resolution, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from model.archs.gpt2 import GPT, GPTConfig
from model.io import CheckpointError, load_model, load_weights_into, read_model_info, save_model

IDENTITY = {"name": "bytes", "fingerprint": "abc", "len": 259, "special_ids": {}, "vocab_size": 384}


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 384, **kw}))


def test_round_trip_gives_identical_logits(tmp_path):
    model = tiny().eval()
    save_model(tmp_path / "run" / "checkpoint", model, IDENTITY, "pretrain", step=7)
    loaded, info = load_model(tmp_path / "run")  # a run folder resolves to its checkpoint/
    idx = torch.randint(0, 259, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
    assert info["step"] == 7 and info["tokenizer"] == IDENTITY and info["data_kind"] == "pretrain"
    assert GPTConfig.from_dict(info["config"]) == model.config
    assert not loaded.training


def test_tied_output_layer_is_stored_once(tmp_path):
    save_model(tmp_path, tiny(), IDENTITY, "pretrain", step=0)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "transformer.wte.weight" in keys
    assert not any("lm_head" in k for k in keys)


def test_missing_or_unfinished_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such run"):
        read_model_info(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="not a finished checkpoint"):
        load_model(tmp_path / "run")


def test_foreign_json_is_refused(tmp_path):
    save_model(tmp_path, tiny(), IDENTITY, "pretrain", step=0)
    info = json.loads((tmp_path / "model.json").read_text())
    info["format"] = "something-else"
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="expected 'zh-mini-llm-gpt'"):
        read_model_info(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_model(tmp_path, tiny(), IDENTITY, "pretrain", step=0)
    with pytest.raises(CheckpointError, match=r"c_attn.bias has shape \(96,\), the model expects \(144,\)"):
        load_weights_into(tiny(n_embd=48), tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights_into(tiny(n_layer=3), tmp_path)
