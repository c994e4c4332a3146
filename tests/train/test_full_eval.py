"""``train eval``: loss / perplexity / bits per byte over a whole split equal a hand computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from model.archs.gpt2 import GPT, GPTConfig
from model.io import save_model
from prep.tokenfile import open_token_folder
from prep.tokenizer import load_tokenizer
from train.cli import cli
from train.full_eval import evaluate_checkpoint

BLOCK = 32


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=384)).eval()
    run = tmp_path_factory.mktemp("eval") / "run"
    save_model(run / "checkpoint", model, load_tokenizer("bytes").identity(), "pretrain", step=11)
    return model, run


def by_hand(model: GPT, data, split: str = "val") -> tuple[float, int]:
    """Mean cross-entropy over every (masked) target, blocks tiling the split, straight from the files."""
    sp = open_token_folder(data).split(split)
    tokens = np.asarray(sp.tokens, dtype=np.int64)
    mask = np.ones(len(tokens), bool) if sp.mask is None else np.asarray(sp.mask) != 0
    total, count = 0.0, 0
    for i in range(0, len(tokens) - 1, BLOCK):
        x = torch.from_numpy(tokens[i : i + BLOCK])
        y = torch.from_numpy(tokens[i + 1 : i + BLOCK + 1])
        x = x[: len(y)]
        m = torch.from_numpy(mask[i + 1 : i + BLOCK + 1])
        with torch.no_grad():
            logits = model(x[None])[0]
        losses = F.cross_entropy(logits, y, reduction="none")
        total += losses[m].double().sum().item()
        count += int(m.sum())
    return total / count, count


def test_pretrain_eval_equals_hand_computation(model_run, pretrain_data, tmp_path):
    model, run = model_run
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(cli, ["eval", "--ckpt", str(run), "--data", str(pretrain_data), "--batch-size", "3",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    loss, count = by_hand(model, pretrain_data)
    stats = open_token_folder(pretrain_data).meta["splits"]["val"]
    assert result["target_tokens"] == count == stats["tokens"] - 1  # every token after the first, once
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(loss / math.log(2) * stats["tokens"] / stats["bytes"], rel=1e-5)
    assert result["step"] == 11 and result["split"] == "val"
    assert f"{result['loss']:.4f}" in r.stdout  # the table


def test_sft_eval_counts_only_masked_targets(model_run, sft_data):
    model, run = model_run
    result = evaluate_checkpoint(run, sft_data, batch_size=4, device="cpu")
    loss, count = by_hand(model, sft_data)
    stats = open_token_folder(sft_data).meta["splits"]["val"]
    assert result["target_tokens"] == count == stats["target_tokens"]
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(
        loss / math.log(2) * stats["target_tokens"] / stats["target_bytes"], rel=1e-5)
    again = evaluate_checkpoint(run, sft_data, batch_size=7, device="cpu")  # batching changes nothing
    assert again["loss"] == pytest.approx(result["loss"], rel=1e-6)


def test_default_output_goes_beside_the_checkpoint(model_run, pretrain_data):
    _, run = model_run
    r = CliRunner().invoke(cli, ["eval", "--ckpt", str(run), "--data", str(pretrain_data)])
    assert r.exit_code == 0, r.output
    assert json.loads((run / f"eval_{pretrain_data.name}_val.json").read_text())["blocks"] > 0


def test_tokenizer_mismatch_is_a_one_line_error(model_run, tmp_path):
    from tests.train.conftest import write_sft

    _, run = model_run
    other = dict(load_tokenizer("bytes").identity(), fingerprint="feedface", name="other")
    data = write_sft(tmp_path / "sft", n_dialogs=6, identity=other)
    r = CliRunner().invoke(cli, ["eval", "--ckpt", str(run), "--data", str(data)])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "fingerprint" in lines[0] and "feedface" in lines[0]


def test_missing_data_is_a_one_line_error(model_run, tmp_path):
    _, run = model_run
    r = CliRunner().invoke(cli, ["eval", "--ckpt", str(run), "--data", str(tmp_path / "nope")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
