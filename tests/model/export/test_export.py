"""Export to Hugging Face: GPT2LMHeadModel and Qwen3ForCausalLM give our logits (1e-4, fp32) and our greedy tokens, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from common.outputs import OutputError
from model.export.hf import export_hf
from model.generate import Engine
from model.sampling import SamplingParams
from prep.chat_template import render_prompt
from tests.conftest import ROOT
from tests.model.conftest import save_tiny, tiny_model

transformers = pytest.importorskip("transformers")


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def hf_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    """transformers `generate`, greedy; the new tokens up to (not including) the first stop id."""
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new)
    new = out[0, len(prompt):].tolist()
    stops = model.generation_config.eos_token_id
    stops = {stops} if isinstance(stops, int) else set(stops)
    return next((new[:i] for i, t in enumerate(new) if t in stops), new)


@pytest.mark.parametrize("kind,model_kw", [
    ("pretrain", {}), ("sft", {}), ("pretrain", {"bias": False}),
    ("pretrain", {"arch": "qwen3", "n_head": 4}),  # Qwen3ForCausalLM: GQA 4 -> 2, QK-norm, RoPE
    ("sft", {"arch": "qwen3", "n_head": 4, "n_kv_head": 1, "tie_embeddings": False, "rope_theta": 1e6}),
], ids=["base", "chat", "no-bias", "qwen3", "qwen3-chat-untied"])
def test_exported_logits_and_greedy_tokens_match(tmp_path, byte_tokenizer, kind, model_kw):
    model = tiny_model(block_size=48, **model_kw)
    run = save_tiny(tmp_path / "run", kind, model=model)
    summary = export_hf(run, tmp_path / "hf")
    theirs = hf_model(tmp_path / "hf")
    x = torch.randint(0, 259, (3, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x) - theirs(x).logits).abs().max().item()
    assert diff < 1e-4
    stops = [258, 256] if kind == "sft" else [256]
    assert summary["stop_ids"] == stops
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == (stops if len(stops) > 1 else stops[0]) and gen["pad_token_id"] == 256
    assert gen["suppress_tokens"] == list(range(259, 384))  # padded rows: never generated there either
    ours = Engine(model, 259, stops)
    for prompt in ([1, 2, 3], list(range(60, 80))):
        mine = ours.generate(prompt, SamplingParams(max_new_tokens=24, temperature=0))[0].tokens
        assert hf_greedy(theirs, prompt, 24) == mine


def test_config_matches_the_model(tmp_path):
    model = tiny_model(block_size=48, layer_norm_eps=1e-6)
    export_hf(save_tiny(tmp_path / "run", model=model), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu_pytorch_tanh"
    assert config["layer_norm_epsilon"] == 1e-6
    assert config["n_positions"] == config["n_ctx"] == 48  # llama.cpp's converter reads n_ctx
    assert config["vocab_size"] == 384 and config["tie_word_embeddings"] is True
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.0
    assert (tmp_path / "hf" / "README.md").is_file()


def test_qwen3_config_names_the_architecture(tmp_path):
    model = tiny_model(block_size=48, arch="qwen3", n_head=4, intermediate_size=80)
    export_hf(save_tiny(tmp_path / "run", model=model), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert (config["num_key_value_heads"], config["head_dim"], config["intermediate_size"]) == (2, 8, 80)
    assert type(hf_model(tmp_path / "hf")).__name__ == "Qwen3ForCausalLM"
    assert "Qwen3ForCausalLM" in (tmp_path / "hf" / "README.md").read_text()


def test_export_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
    run = save_tiny(tmp_path / "run")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a Hugging Face export made by this project"):
        export_hf(run, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    export_hf(run, tmp_path / "hf")
    export_hf(run, tmp_path / "hf", dtype="bf16")  # a re-export replaces the earlier one
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert not list(tmp_path.glob(".hf.partial"))


def test_re_export_keeps_a_folder_holding_the_users_own_files(tmp_path):
    """A .gguf or notes/ put into an export folder are the user's: refuse rather than delete them."""
    run = save_tiny(tmp_path / "run")
    export_hf(run, tmp_path / "hf")
    (tmp_path / "hf" / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "hf" / "notes").mkdir()
    (tmp_path / "hf" / "notes" / "a.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        export_hf(run, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.gguf").read_bytes() == b"GGUF" and (tmp_path / "hf" / "notes" / "a.txt").exists()


@pytest.fixture(scope="module")
def qwen_chat_export(tmp_path_factory, qwen):
    """A chat model with the real Qwen2 tokenizer: 151,680 rows, kept small by a width of 32."""
    tmp = tmp_path_factory.mktemp("qwen-export")
    model = tiny_model(block_size=64, vocab_size=151680, std=0.05)
    run = save_tiny(tmp / "run", "sft", tokenizer="qwen2", model=model)
    export_hf(run, tmp / "hf")
    return model, tmp / "hf"


def test_real_tokenizer_chat_export_works_with_auto_classes(qwen, qwen_chat_export):
    model, folder = qwen_chat_export
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    theirs = hf_model(folder)
    messages = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "数学是什么？"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == render_prompt(messages, qwen)  # the template users get is the one SFT trained on
    assert tok.eos_token == "<|im_end|>"
    assert theirs.generation_config.eos_token_id == [qwen.im_end_id, qwen.eot_id]
    engine = Engine(model, len(qwen), [qwen.im_end_id, qwen.eot_id])
    mine = engine.generate(list(ids), SamplingParams(max_new_tokens=12, temperature=0))[0].tokens
    assert hf_greedy(theirs, list(ids), 12) == mine
    assert tok.decode(mine) == qwen.decode(mine)


def test_transformers_4_loads_the_export(qwen_chat_export, tmp_path):
    """transformers 4.x, installed beside the venv by `make test`, gives the same logits."""
    tf4 = ROOT / ".venv" / "tf4"
    if not (tf4 / ".installed").exists():
        pytest.skip("transformers 4.x is not installed in .venv/tf4 (`make test` installs it)")
    model, folder = qwen_chat_export
    x = [[151644, 872, 198, 104552, 20412, 151645, 198, 151644, 77091, 198]]
    script = (
        "import sys, json, torch, transformers\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "assert transformers.__version__.startswith('4.'), transformers.__version__\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    logits = m(torch.tensor(json.loads(sys.argv[2]))).logits[0, -1]\n"
        "print(json.dumps({'top': logits.topk(5).indices.tolist(), 'eos': t.eos_token,\n"
        "                  'values': logits.topk(5).values.tolist()}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tf4), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script, str(folder), json.dumps(x)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        mine = model(torch.tensor(x))[0, -1].topk(5)
    assert out["top"] == mine.indices.tolist() and out["eos"] == "<|im_end|>"
    assert max(abs(a - b) for a, b in zip(out["values"], mine.values.tolist(), strict=True)) < 1e-4
