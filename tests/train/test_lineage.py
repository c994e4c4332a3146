"""`train report --lineage`: a wrong path is one line; the lineage is the true ancestry, recorded by
identity at --init time, so a parent retrained since is shown as replaced, never as the parent."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from model.archs.gpt2 import GPT, GPTConfig
from model.identity import checkpoint_identity
from model.io import save_model
from train.cli import cli
from train.report import lineage


def make_run(path, tokenizer, stage: str, init=None, seed: int = 0, step: int = 10):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=384))
    kind = {"pretrain": "pretrain", "sft": "sft", "dpo": "pref"}[stage]
    save_model(path / "checkpoint", model, tokenizer.identity(), kind, step=step)
    info = {"stage": stage, "config": {}, "init": None if init is None else str(init / "checkpoint"),
            "init_identity": None if init is None else checkpoint_identity(init)}
    (path / "checkpoint" / "train_config.json").write_text(json.dumps(info))
    return path


def report(*args):
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def family(tmp_path, tokenizer):
    pre = make_run(tmp_path / "pre", tokenizer, "pretrain")
    sft = make_run(tmp_path / "sft", tokenizer, "sft", init=pre, seed=1)
    dpo = make_run(tmp_path / "dpo", tokenizer, "dpo", init=sft, seed=2)
    return pre, sft, dpo


def test_lineage_follows_recorded_parents(tmp_path, byte_tokenizer):
    pre, sft, dpo = family(tmp_path, byte_tokenizer)
    assert [(a.path, a.stage, a.replaced) for a in lineage(dpo)] == [
        (str(pre), "pretrain", ()), (str(sft), "sft", ()), (str(dpo), "dpo", ())]
    r = report("--lineage", dpo)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "base model (pretrain)" in text and "chat model (sft)" in text and "replaced" not in text


def test_a_retrained_parent_is_shown_replaced_not_followed(tmp_path, byte_tokenizer):
    pre, sft, dpo = family(tmp_path, byte_tokenizer)
    other = make_run(tmp_path / "other", byte_tokenizer, "pretrain", seed=5)
    make_run(sft, byte_tokenizer, "sft", init=other, seed=3, step=99)  # retrained in place, from another parent
    chain = lineage(dpo)
    assert [a.path for a in chain] == [str(sft), str(dpo)]
    assert chain[0].replaced and "step 10 -> 99" in chain[0].replaced and "different weights" in chain[0].replaced
    r = report("--lineage", dpo)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert "replaced" in text and str(other) not in text  # the new sft's parent is not dpo's ancestor
    assert "chat model (sft)" not in text  # the run now at runs/sft is not summarised as dpo's parent


def test_a_removed_parent_is_shown_replaced(tmp_path, byte_tokenizer):
    _, sft, dpo = family(tmp_path, byte_tokenizer)
    (sft / "checkpoint" / "model.safetensors").unlink()
    (first, _) = lineage(dpo)
    assert first.path == str(sft) and first.replaced


def test_lineage_of_a_missing_path_or_a_token_folder_is_one_line(tmp_path, byte_tokenizer):
    from tests.train.conftest import write_pretrain

    data = write_pretrain(tmp_path / "data")
    for path, words in ((tmp_path / "nope", "no such run"), (data, "not a finished checkpoint")):
        for args in (["--lineage", path], [path]):
            r = report(*args)
            assert r.exit_code == 1 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
