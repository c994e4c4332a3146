"""A stage owns its settings and overlay (issue 26 item 1, issue 27 item 4): a run records only its own stage's
settings; a setting the stage or its loss does not use is a one-line error; presets are sizes with the old
names as aliases; every stage command expands ``~`` the same way."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from click.testing import CliRunner

from common.cli import UserPath
from train.cli import cli, stage_command
from train.config import TrainConfig
from train.options import SHARED, StageOptions, options_class, shared
from train.overrides import apply_overrides
from train.presets import compose, preset, resolve
from train.stages import STAGES, get


def test_a_pretraining_config_holds_no_preference_setting():
    d = json.loads(preset("tiny").to_json())
    assert d["stage"] == {"kd_weight": 0.0} and not {"loss", "dpo_beta", "simpo_beta", "orpo_lambda"} & set(d)
    lora = {"lora_rank": 0, "lora_alpha": 32.0, "lora_dropout": 0.0, "lora_targets": "all", "lora_lr": 5e-3}
    assert preset("tiny", "dpo").to_dict()["stage"] == {"loss": "dpo", "dpo_beta": 0.1, "simpo_beta": 2.0,
                                                        "simpo_gamma": 1.0, "orpo_lambda": 0.1, **lora}


@pytest.mark.parametrize("stage, item, message", [
    ("sft", "loss=orpo", "loss is a setting of `train dpo`, not of `train sft`"),
    ("pretrain", "dpo_beta=0.2", "dpo_beta is a setting of `train dpo`, not of `train pretrain`"),
    ("dpo", "simpo_beta=3", "simpo_beta is a setting of loss=simpo, and this run's loss is dpo"),
    ("dpo", "orpo_lambda=0.2", "orpo_lambda is a setting of loss=orpo"),
    ("dpo", "dpo_beta=1e-300", "dpo_beta must be from 0.001 to 100"),
    ("dpo", "loss=kto", "loss must be one of dpo, simpo, orpo"),
])
def test_a_setting_the_run_does_not_use_is_one_line(stage, item, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        apply_overrides(preset("tiny", stage), [item])
    assert "\n" not in str(e.value)


def test_the_loss_s_own_settings_are_taken():
    cfg = apply_overrides(preset("tiny", "dpo"), ["loss=simpo", "simpo_beta=3"])
    assert (cfg.stage.loss, cfg.stage.simpo_beta) == ("simpo", 3.0)
    assert get("dpo").for_config(cfg).objective.beta == 3.0


@pytest.mark.parametrize("args, message", [
    (["sft", "--set", "loss=orpo"], "loss is a setting of `train dpo`, not of `train sft`"),
    (["dpo", "--set", "simpo_beta=3"], "simpo_beta is a setting of loss=simpo"),
    (["pretrain", "--set", "dpo_beta=0.5"], "dpo_beta is a setting of `train dpo`"),
])
def test_the_commands_refuse_them_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [args[0], "--data", str(tmp_path), "--out", str(out), "--init", str(tmp_path),
                                 *args[1:]] if args[0] != "pretrain" else
                           [args[0], "--data", str(tmp_path), "--out", str(out), *args[1:]])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not out.exists()


def test_presets_are_sizes_and_the_stage_overlay_applies_by_itself():
    assert preset("tiny", "sft").lr == 5e-4 and preset("mini", "sft").lr == 3e-5
    assert preset("tiny", "dpo").max_steps == 40 and preset("mini", "dpo").lr == 1e-6
    assert preset("tiny", "sft").model == preset("tiny").model  # an overlay is the schedule, not the model
    for old, (size, arch) in {"tiny-sft": ("tiny", "gpt2"), "qwen3-mini-dpo": ("mini", "qwen3"),
                              "qwen3-tiny": ("tiny", "qwen3")}.items():
        for stage in ("pretrain", "sft", "dpo"):
            assert preset(old, stage) == compose(size, stage, [{"arch": arch}])
            assert preset(old, stage).model.arch == arch and preset(old, stage).lr == preset(size, stage).lr
    assert "now --preset mini --set arch=qwen3" in resolve("qwen3-mini-dpo")[2]
    with pytest.raises(ValueError, match="unknown preset 'huge'; sizes are mini, tiny"):
        preset("huge")


def test_layers_compose_in_order():
    """size -> stage overlay -> further layers (a recipe) -> --set."""
    cfg = compose("tiny", "sft", [{"lr": 1e-2, "optimizer": "muon"}, {"lr": 2e-2}])
    assert (cfg.lr, cfg.optimizer, cfg.warmup_steps, cfg.model.n_layer) == (2e-2, "muon", 10, 2)
    assert apply_overrides(cfg, ["lr=3e-2"]).lr == 3e-2 and cfg.set_fields == ()


def test_every_stage_command_expands_user_paths():
    for stage in STAGES.values():
        params = {p.name: p for p in stage_command(stage).params}
        assert isinstance(params["out"].type, UserPath)
        assert ("init" in params) == stage.needs_init
        if stage.needs_init:
            assert isinstance(params["init"].type, UserPath), stage.name  # `dpo --init ~/...` was not expanded


def test_old_configs_read_with_their_stage():
    """train_config.json written before settings nested: flat, and a pretraining run's held "loss": "dpo"."""
    flat = {k: v for k, v in preset("tiny").to_dict().items() if k != "stage"} | {"loss": "dpo", "dpo_beta": 0.3}
    assert TrainConfig.from_dict(flat).stage.to_dict() == {"kd_weight": 0.0}  # pretrain's own (train.distill)
    assert TrainConfig.from_dict(flat, "dpo").stage.dpo_beta == 0.3
    cfg = apply_overrides(preset("tiny", "dpo"), ["dpo_beta=0.2"])
    assert TrainConfig.from_dict(json.loads(cfg.to_json()), "dpo") == cfg


def test_a_setting_of_another_stage_does_not_follow_a_config_to_it():
    cfg = apply_overrides(preset("tiny", "dpo"), ["dpo_beta=0.2"])
    with pytest.raises(ValueError, match="dpo_beta is a setting of `train dpo`, not of `train sft`"):
        cfg.for_stage("sft")
    sft = apply_overrides(preset("tiny", "dpo"), ["lr=1e-3"]).for_stage("sft").stage.to_dict()
    assert sft.keys() == {"kd_weight", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_lr"}


def test_a_shared_group_is_declared_once_for_several_stages():
    @shared("sft", "dpo")
    @dataclasses.dataclass
    class Distil(StageOptions):
        teacher_weight: float = 0.0
        RANGES = {"teacher_weight": (0.0, 1.0)}

    try:
        assert "teacher_weight" in options_class("sft", StageOptions).field_names()
        assert {"loss", "teacher_weight"} <= set(get("dpo").option_class().field_names())
        assert "teacher_weight" not in get("pretrain").option_class().field_names()
        cfg = apply_overrides(preset("tiny", "dpo"), ["teacher_weight=0.5"])
        assert cfg.stage.teacher_weight == 0.5 and cfg.stage.loss == "dpo"
        with pytest.raises(ValueError, match="teacher_weight must be from 0 to 1"):
            apply_overrides(preset("tiny", "sft"), ["teacher_weight=2"])
    finally:
        SHARED.pop()


def test_the_makefile_stage_targets_are_the_registry_s():
    from tests.train.conftest import ROOT
    from train.stages.makefile import render

    assert (ROOT / "stages.mk").read_text("utf-8") == render(), "rerun: python -m train.stages.makefile > stages.mk"
    assert "\ninclude stages.mk\n" in (ROOT / "Makefile").read_text("utf-8")
