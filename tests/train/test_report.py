"""`train report` reads a run folder's checkpoint and metrics and says where its files are."""

from __future__ import annotations

import json

from click.testing import CliRunner

from model.archs.gpt2 import GPT, GPTConfig
from model.io import save_model
from train.cli import cli
from train.report import summarize


def make_run(run, byte_tokenizer):
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=384))
    save_model(run / "checkpoint", model, byte_tokenizer.identity(), "pretrain", step=30)
    rows = [{"step": 0, "val_loss": 6.0, "val_bpb": 8.6}, {"step": 10, "loss": 5.0, "lr": 1e-3},
            {"step": 20, "val_loss": 3.0, "val_bpb": 4.3}, {"step": 30, "loss": 2.5, "lr": 1e-4},
            {"step": 30, "val_loss": 3.5, "val_bpb": 5.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3', "utf-8")


def test_summary_reads_first_best_and_last_eval(tmp_path, byte_tokenizer):
    make_run(tmp_path, byte_tokenizer)
    s = summarize(tmp_path)
    assert s["step"] == 30 and s["kind"] == "base model (pretrain)"
    assert s["val_first"] == (0, 6.0) and s["val_best"] == (20, 3.0) and s["val_last"] == (30, 3.5, 5.0)
    assert s["train_last"] == 2.5


def test_report_command_and_its_error(tmp_path, byte_tokenizer):
    make_run(tmp_path / "run", byte_tokenizer)
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "6.000 (step 0) -> 3.500 (step 30), best 3.000 (step 20)" in result.output
    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such run or checkpoint folder" in missing.output
