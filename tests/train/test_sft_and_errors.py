"""SFT from a pretraining checkpoint trains only on masked tokens; user mistakes are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.archs.gpt2 import GPT
from prep.tokenizer import load_tokenizer
from tests.train.conftest import TINY_SET, tiny_args, write_sft
from train.cli import cli
from train.overrides import apply_overrides
from train.presets import preset
from train.trainer import RunSpec, TrainError, train


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result) -> str:
    """The error a user sees: exactly one 'Error:' line, no traceback, non-zero exit."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture(scope="module")
def pretrained(pretrain_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "run"
    r = invoke("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), "--max-steps", "4",
                                      "--eval-every", "4", "--set", "block_size=64"))
    assert r.exit_code == 0, r.output
    return out


def test_sft_starts_from_the_pretrained_weights_and_learns_replies(pretrained, sft_data, tmp_path):
    out = tmp_path / "sft"
    r = invoke("sft", *tiny_args("--data", str(sft_data), "--init", str(pretrained), "--out", str(out),
                                 "--max-steps", "12", "--eval-every", "6", "--set", "lr=3e-3", shape=False))
    assert r.exit_code == 0, r.output
    assert f"starting from the weights of {pretrained / 'checkpoint'}" in " ".join(r.output.split())
    info = json.loads((out / "checkpoint" / "model.json").read_text())
    assert info["data_kind"] == "sft" and info["step"] == 12
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert [e["step"] for e in evals] == [0, 6, 12]  # step 0: the pretrained model on the replies
    assert evals[2]["val_loss"] < evals[1]["val_loss"] < evals[0]["val_loss"]
    # bpb over the trained text: loss/ln2 x target tokens / target bytes (1 byte per token here)
    assert evals[2]["val_bpb"] == pytest.approx(evals[2]["val_loss"] / 0.6931471805599453, rel=0.02)


def test_sft_with_nothing_to_train_is_an_error(pretrained, tmp_path):
    """All targets masked out: the run would 'finish' at loss 0.0000 having learnt nothing."""
    data = write_sft(tmp_path / "sft0", all_masked_out=True)
    out = tmp_path / "sft"
    err = one_line_error(invoke("sft", *tiny_args("--data", str(data), "--init", str(pretrained), "--out", str(out),
                                                  "--max-steps", "3", shape=False)))
    assert "nothing to learn" in err and str(data) in err and not out.exists()


def test_sft_refuses_a_shape_set_against_the_init_model(pretrained, sft_data, tmp_path):
    err = one_line_error(invoke("sft", *tiny_args("--data", str(sft_data), "--init", str(pretrained),
                                                  "--out", str(tmp_path / "o"), "--set", "n_layer=3", shape=False)))
    assert "(--init): its model has n_layer=2; --set n_layer=3 would change the function it continues" in err


def test_sft_refuses_data_from_another_tokenizer(pretrained, tmp_path):
    other = {**load_tokenizer("bytes").identity(), "name": "other", "fingerprint": "0123456789abcdef"}
    data = write_sft(tmp_path / "sft", identity=other)
    err = one_line_error(invoke("sft", *tiny_args("--data", str(data), "--init", str(pretrained),
                                                  "--out", str(tmp_path / "o"), shape=False)))
    assert "(--init): made with tokenizer 'bytes'" in err and "the data's tokenizer 'other'" in err


def test_sft_needs_init(sft_data, tmp_path):
    err = one_line_error(invoke("sft", *tiny_args("--data", str(sft_data), "--out", str(tmp_path / "o"), shape=False)))
    assert "needs --init" in err


def test_resuming_with_another_shape_is_refused(pretrain_data, pretrained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    err = one_line_error(invoke("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out),
                                                       "--set", "block_size=64", "--set", "n_embd=64")))
    assert "(the run being resumed): its model has n_embd=32; --set n_embd=64 would change" in err


def test_incomplete_data_folder_is_refused(pretrain_data, tmp_path):
    data = tmp_path / "wiki"
    shutil.copytree(pretrain_data, data)
    (data / "meta.json").unlink()
    err = one_line_error(invoke("pretrain", *tiny_args("--data", str(data), "--out", str(tmp_path / "o"))))
    assert str(data) in err and "incomplete" in err
    err = one_line_error(invoke("pretrain", *tiny_args("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))))
    assert "no such token folder" in err


def test_data_of_the_wrong_kind_is_refused(sft_data, tmp_path):
    err = one_line_error(invoke("pretrain", *tiny_args("--data", str(sft_data), "--out", str(tmp_path / "o"))))
    assert "needs a 'pretrain' one" in err


def test_bad_override_is_a_usage_error(pretrain_data, tmp_path):
    r = invoke("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(tmp_path / "o"), "--set", "lr=abc"))
    assert r.exit_code == 2 and "--set 'lr=abc'" in r.output


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(pretrain_data, tmp_path, monkeypatch):
    cfg = apply_overrides(preset("tiny"), [*TINY_SET, "max_steps=20", "ckpt_every=4", "eval_every=100"])
    real_forward, calls = GPT.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 2 * 6:  # accumulation 2: steps 1..6 are fine, step 7 produces NaN
                return out[0] * float("nan"), out[1]
        return out

    monkeypatch.setattr(GPT, "forward", forward)
    out = tmp_path / "run"
    with pytest.raises(TrainError, match=r"step 7: the loss is nan; the step was not applied and the run stops "
                                         r"\(the last good checkpoint \(step 4\)"):
        train(cfg, RunSpec("pretrain", pretrain_data, out))
    assert json.loads((out / "checkpoint" / "model.json").read_text())["step"] == 4
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6]  # the eval at step 0, then the six good steps

