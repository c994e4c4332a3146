"""A cut vocabulary (`prep vocab`) through the whole stack: the model's vocabulary follows the tokenizer,
checkpoints and token folders of the other vocabulary are refused in one line, and sample, chat, eval,
bpb, plan, the Hugging Face export (transformers' greedy parity) and GGUF work with it."""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from click.testing import CliRunner

from model.cli import cli as model_cli
from model.export.gguf import export_gguf
from model.export.hf import export_hf
from model.io import save_model
from model.loader import load_for_generation
from model.sampling import SamplingParams
from prep.sft import run_sft
from prep.tokenizer import gpt2_char_to_byte, load_tokenizer
from prep.vocab_build import build_vocab
from prep.wiki import run_wiki
from tests.conftest import ROOT
from tests.model.conftest import tiny_model
from tests.train.conftest import tiny_args
from tests.train.test_sft_and_errors import invoke, one_line_error
from train.plan_cli import plan_command

SIZE = 1000  # not a multiple of 128: the model's rows are padded to 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Qwen2 and cut token folders of the bundled samples, the cut vocabulary, a run trained on it."""
    tmp = tmp_path_factory.mktemp("cut")
    run_wiki(ROOT / "sample_data" / "wiki_zh", tmp / "wiki", val_fraction=0.2, workers=1, show_progress=False)
    vocab = tmp / "vocab"
    build_vocab([tmp / "wiki"], vocab, SIZE)
    run_wiki(ROOT / "sample_data" / "wiki_zh", tmp / "wiki_cut", tokenizer=str(vocab), val_fraction=0.2, workers=1,
             show_progress=False)
    run_sft(ROOT / "sample_data" / "belle" / "multiturn_chat.json", tmp / "sft_cut", tokenizer=str(vocab),
            val_fraction=0.2, workers=1, show_progress=False)
    r = invoke("pretrain", *tiny_args("--data", str(tmp / "wiki_cut"), "--out", str(tmp / "run"), "--max-steps", "3",
                                      "--eval-every", "3"))
    assert r.exit_code == 0, r.output
    return tmp, str(vocab)


def test_the_models_vocabulary_follows_the_tokenizer(stack):
    tmp, vocab = stack
    info = json.loads((tmp / "run" / "checkpoint" / "model.json").read_text())
    assert info["config"]["vocab_size"] == 1024 and info["tokenizer"]["len"] == SIZE
    assert info["tokenizer"]["name"] == vocab
    plan = CliRunner().invoke(plan_command, ["--preset", "tiny", "--tokenizer", vocab])
    assert plan.exit_code == 0 and "vocab 1,024" in plan.output


def test_wrong_pairings_are_one_line_errors(stack):
    tmp, _ = stack
    qwen = load_tokenizer("qwen2")
    full = tmp / "full_run"
    save_model(full / "checkpoint", tiny_model(vocab_size=151680, block_size=64), qwen.identity(), "pretrain", step=1)
    cut_ckpt_full_data = one_line_error(invoke("eval", "--ckpt", str(tmp / "run"), "--data", str(tmp / "wiki")))
    assert "made with tokenizer" in cut_ckpt_full_data and "'qwen2'" in cut_ckpt_full_data
    full_ckpt_cut_data = one_line_error(invoke("eval", "--ckpt", str(full), "--data", str(tmp / "wiki_cut")))
    assert "made with tokenizer 'qwen2'" in full_ckpt_cut_data
    sft = one_line_error(invoke("sft", *tiny_args("--data", str(tmp / "sft_cut"), "--init", str(full), "--out",
                                                  str(tmp / "sft"), "--max-steps", "1", shape=False)))
    assert "made with tokenizer 'qwen2'" in sft


def test_sample_chat_and_bpb_use_the_cut_tokenizer(stack, tmp_path):
    tmp, _ = stack
    run = str(tmp / "run")
    sample = CliRunner().invoke(model_cli, ["sample", "--ckpt", run, "--prompt", "数学是", "--max-new-tokens", "5"])
    assert sample.exit_code == 0 and "数学是" in sample.output, sample.output
    chat = CliRunner().invoke(model_cli, ["chat", "--ckpt", run, "--message", "你好", "--max-new-tokens", "3"])
    assert chat.exit_code == 0, chat.output
    text = tmp_path / "t.txt"
    text.write_text("数学是研究数量、结构以及空间等概念的一门学科。", "utf-8")
    bpb = CliRunner().invoke(model_cli, ["bpb", "--model", run, "--text", str(text)])
    assert bpb.exit_code == 0, bpb.output


def test_export_carries_the_cut_tokenizer_with_greedy_parity(stack):
    transformers = pytest.importorskip("transformers")
    from tests.model.export.test_export import hf_greedy

    tmp, vocab = stack
    export_hf(tmp / "run", tmp / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp / "hf", local_files_only=True)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf").eval()
    cut = load_tokenizer(vocab)
    assert len(tok) == SIZE and theirs.config.vocab_size == 1024
    prompt = "数学是研究数量、结构的学科。The end 😀"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert list(ids) == cut.encode(prompt)
    loaded = load_for_generation(tmp / "run", device="cpu")
    assert loaded.tokenizer.fingerprint == cut.fingerprint
    mine = loaded.engine.generate(ids, SamplingParams(max_new_tokens=10, temperature=0))[0].tokens
    assert hf_greedy(theirs, ids, 10) == mine
    with torch.no_grad():
        x = torch.tensor([ids])
        assert (loaded.model(x) - theirs(x).logits).abs().max().item() < 1e-4


def test_gguf_has_the_cut_tokens_and_merges(stack):
    tmp, vocab = stack
    summary = export_gguf(tmp / "run", type_name="f32")
    reader = gguf.GGUFReader(summary["out"])
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    cut = load_tokenizer(vocab)
    assert len(tokens) == SIZE == summary["n_vocab"]
    to_byte = gpt2_char_to_byte()
    assert all(bytes(to_byte[ch] for ch in tokens[i]) == cut.token_bytes(i) for i in range(cut.eot_id))
    assert tokens[cut.eot_id:] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    assert merges == (tmp / "vocab" / "merges.txt").read_text("utf-8").splitlines()[1:]  # the folder's own
    assert len(merges) == cut.eot_id - 256
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert SIZE in embedding.shape.tolist()  # the tokenizer's rows only, not the padding
