"""Exports of a LoRA run: the merged Hugging Face model, and a PEFT adapter folder that peft loads onto the
base's export with the merged model's logits (1e-4, fp32) and greedy tokens, offline."""

from __future__ import annotations

import json

import pytest
import torch

from model.adapters import load_model, save_adapter
from model.export.hf import export_hf
from model.export.peft_adapter import export_adapter
from model.identity import checkpoint_identity
from model.io import CheckpointError
from model.lora import LoraOptions, attach
from prep.tokenizer import load_tokenizer
from tests.model.conftest import run_make, save_tiny, tiny_model
from tests.model.export.test_export import hf_greedy, hf_model

peft = pytest.importorskip("peft")


def lora_run(tmp_path, rank=4, tokenizer="bytes", **model_kw):
    """A tiny base run and a LoRA run on it whose adapters are non-zero (B drawn at random)."""
    base = save_tiny(tmp_path / "base", tokenizer=tokenizer, model=tiny_model(**{"block_size": 48, **model_kw}))
    model, _ = load_model(base)
    options = LoraOptions(rank, alpha=8.0)
    attach(model, options)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.2)
    record = {**options.to_dict(), "base": checkpoint_identity(base)}
    save_adapter(tmp_path / "sft" / "checkpoint", model, record, load_tokenizer(tokenizer).identity(), "sft", 5, True)
    return base, tmp_path / "sft"


@pytest.mark.parametrize("model_kw", [{}, {"arch": "qwen3", "n_head": 4}], ids=["gpt2", "qwen3"])
def test_peft_adapter_on_the_base_export_equals_the_merged_export(tmp_path, model_kw):
    base, run = lora_run(tmp_path, **model_kw)
    export_hf(base, tmp_path / "base_hf")
    export_hf(run, tmp_path / "merged_hf")
    summary = export_adapter(run, tmp_path / "adapter")
    assert summary["tensors"] == 2 * (4 if not model_kw else 7) * 2  # A and B per layer kind, 2 layers
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["fan_in_fan_out"] == (not model_kw)
    with_adapter = peft.PeftModel.from_pretrained(hf_model(tmp_path / "base_hf"), tmp_path / "adapter").eval()
    merged = hf_model(tmp_path / "merged_hf")
    ours, _ = load_model(run)
    x = torch.randint(0, 259, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = with_adapter(x).logits
        assert (theirs - merged(x).logits).abs().max().item() < 1e-4
        assert (theirs - ours(x)).abs().max().item() < 1e-4
        with with_adapter.disable_adapter():  # the adapters do change the model
            assert (with_adapter(x).logits - theirs).abs().max().item() > 1e-2
    for prompt in ([1, 2, 3], list(range(60, 80))):
        assert hf_greedy(with_adapter, prompt, 16) == hf_greedy(merged, prompt, 16)


def test_adapter_export_refuses_a_full_model_and_a_changed_base(tmp_path):
    base, run = lora_run(tmp_path)
    with pytest.raises(CheckpointError, match="not a LoRA run"):
        export_adapter(base, tmp_path / "a")
    save_tiny(tmp_path / "base", model=tiny_model(block_size=48, seed=7))  # another model at the same path
    with pytest.raises(CheckpointError, match="has changed since: different weights"):
        export_adapter(run, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_make_export_adapter_writes_the_peft_folder(tmp_path):
    _, run = lora_run(tmp_path)
    r = run_make("export", CKPT=str(run), ADAPTER="1")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (run / "hf-adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    r = run_make("export", CKPT=str(run), ADAPTER="yes")
    assert r.returncode != 0 and "Invalid value for '--adapter'" in r.stderr
