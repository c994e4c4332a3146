"""A run that continues a model keeps its function (issue 26 item 3, issue 27 items 7 and 8): a fine-tune
takes every model field but the training knobs from its --init whatever the preset, refuses one set to
another value, a resumed run names a changed knob and refuses a changed function, and an absurd value is
refused before anything is written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from model.io import CheckpointError
from tests.train.conftest import TINY_SET
from train.cli import cli
from train.overrides import apply_overrides
from train.presets import preset
from train.trainer import RunSpec, train

RUN = [s for s in TINY_SET if s.split("=")[0] not in ("n_layer", "n_head", "n_embd", "block_size")]


def model_of(run) -> dict:
    return json.loads((run / "checkpoint" / "model.json").read_text())["config"]


@pytest.fixture(scope="module")
def qwen3_base(pretrain_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("inherit") / "pre"
    cfg = apply_overrides(preset("tiny"), [*TINY_SET, "arch=qwen3", "rope_theta=1e6", "rms_norm_eps=1e-5",
                                           "max_steps=2", "eval_every=100"])
    train(cfg, RunSpec("pretrain", pretrain_data, out))
    return out


@pytest.mark.parametrize("name", ["tiny", "qwen3-tiny", "mini", "qwen3-mini-sft"])
def test_a_fine_tune_keeps_the_function_of_its_init_whatever_the_preset(qwen3_base, sft_data, tmp_path, name):
    out = tmp_path / "sft"
    cfg = apply_overrides(preset(name, "sft"), [*RUN, "max_steps=1", "eval_every=100", "dropout=0.1"])
    train(cfg, RunSpec("sft", sft_data, out, qwen3_base))
    got = model_of(out)
    assert (got["arch"], got["rope_theta"], got["rms_norm_eps"]) == ("qwen3", 1e6, 1e-5)
    assert (got["n_layer"], got["n_embd"], got["dropout"]) == (2, 32, 0.1)  # the shape inherited, a knob taken


@pytest.mark.parametrize("item, message", [
    ("rope_theta=10000", "its model has rope_theta=1000000.0; --set rope_theta=10000.0 would change the function"),
    ("arch=gpt2", "a model of arch qwen3; --set arch=gpt2 would train another architecture"),
    ("n_layer=3", "its model has n_layer=2"),
])
def test_a_function_field_set_to_another_value_is_refused(qwen3_base, sft_data, tmp_path, item, message):
    cfg = apply_overrides(preset("qwen3-tiny", "sft"), [*RUN, "max_steps=1", item])
    with pytest.raises(CheckpointError, match=message):
        train(cfg, RunSpec("sft", sft_data, tmp_path / "sft", qwen3_base))
    assert not (tmp_path / "sft").exists()


def test_a_resumed_run_names_a_changed_knob_and_refuses_a_changed_function(pretrain_data, tmp_path):
    out = tmp_path / "run"
    base = [*TINY_SET, "arch=qwen3", "rope_theta=1e6", "eval_every=100"]
    train(apply_overrides(preset("tiny"), [*base, "max_steps=2"]), RunSpec("pretrain", pretrain_data, out))
    with pytest.raises(CheckpointError, match="its model has rope_theta=1000000.0; --set rope_theta=500000.0"):
        train(apply_overrides(preset("tiny"), [*base, "rope_theta=5e5", "max_steps=3"]),
              RunSpec("pretrain", pretrain_data, out))
    r = CliRunner().invoke(cli, ["pretrain", "--preset", "tiny", "--data", str(pretrain_data), "--out", str(out),
                                 *(a for s in TINY_SET for a in ("--set", s)), "--set", "dropout=0.1",
                                 "--max-steps", "3"])  # no rope_theta: the checkpoint's, not the preset's 10000
    assert r.exit_code == 0, r.output
    assert "changed since the checkpoint" in r.output and "dropout 0.0 -> 0.1" in r.output
    assert model_of(out)["rope_theta"] == 1e6 and model_of(out)["dropout"] == 0.1


@pytest.mark.parametrize("item", ["rope_theta=1e-300", "rms_norm_eps=1e-300", "rope_theta=1e300"])
def test_an_absurd_model_value_is_refused_before_anything_is_written(pretrain_data, tmp_path, item):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["pretrain", "--preset", "tiny", "--data", str(pretrain_data), "--out", str(out),
                                 "--set", "arch=qwen3", "--set", item])
    assert r.exit_code == 2 and f"{item.split('=')[0]} = " in r.output, r.output
    assert not out.exists()
