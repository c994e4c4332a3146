"""The modern recipe's parts in a real run: arch qwen3 and optimizer muon (on both archs) train, resume
exactly from a checkpoint, and sample."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from model.cli import cli as model_cli
from tests.train.conftest import run_cli, tiny_args
from tests.train.test_resume import RUN, STOP, assert_same_run, ckpt_step, train_lines

RECIPES = {"qwen3": ["--set", "arch=qwen3"], "gpt2-muon": ["--set", "optimizer=muon"],
           "qwen3-muon": ["--set", "arch=qwen3", "--set", "optimizer=muon"]}


def reference_run(data: Path, out: Path, recipe: list[str]) -> Path:
    r = run_cli("pretrain", *tiny_args("--data", str(data), "--out", str(out), *RUN, *recipe, "--stop-at", str(STOP)))
    assert r.returncode == 0, r.stderr
    assert ckpt_step(out) == STOP
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_a_stopped_run_resumes_exactly_and_the_model_samples(pretrain_data, tmp_path, name):
    """The recipe's state (qwen3's weights, Muon's momentum) goes through a checkpoint and back bit for bit.
    The run stops at --stop-at, in this process; a kill -9 between checkpoints, which costs a process of its
    own, is test_resume's (the same save and load)."""
    recipe = RECIPES[name]
    reference = reference_run(pretrain_data, tmp_path / "ref", recipe)
    losses = [r["loss"] for r in train_lines(reference)]
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns
    out = tmp_path / "run"
    for stop in (11, STOP):
        r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), *RUN, *recipe,
                                           "--stop-at", str(stop)))
        assert r.returncode == 0, r.stderr
        assert ckpt_step(out) == stop
    assert "resuming from" in r.stderr
    assert_same_run(out, reference)
    sample = CliRunner().invoke(model_cli, ["sample", "--ckpt", str(out), "--prompt", "数学", "--max-new-tokens", "8",
                                            "--temperature", "0"])
    assert sample.exit_code == 0, sample.output


def test_qwen3_trains_and_samples_with_a_1024_token_context(pretrain_data, tmp_path):
    out = tmp_path / "long"
    r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), "--set", "arch=qwen3",
                                       "--set", "block_size=1024", "--set", "batch_size=2", "--set",
                                       "micro_batch_size=1", "--max-steps", "2", "--eval-every", "2"))
    assert r.returncode == 0, r.stderr
    sample = CliRunner().invoke(model_cli, ["sample", "--ckpt", str(out), "--prompt", "数学" * 200,
                                            "--max-new-tokens", "8", "--temperature", "0"])
    assert sample.exit_code == 0, sample.output
    report = run_cli("report", str(out))
    assert report.returncode == 0 and "block 1024" in report.stdout + report.stderr, report.stderr


def test_a_gqa_that_does_not_divide_is_one_line(pretrain_data, tmp_path):
    r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(tmp_path / "x"), "--set",
                                       "arch=qwen3", "--set", "n_kv_head=3"))
    assert r.returncode != 0
    assert "n_kv_head (3) must divide n_head (2)" in r.stderr and "Traceback" not in r.stderr
