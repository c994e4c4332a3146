"""The seams are real: an architecture and a stage defined here, in the test folder, train, sample and plan
through the product's own commands without a product file knowing them (issue 18). The stage brings its
own settings, loss and overlay, and gets its `python -m train` command, `train plan --stage` and
`train report`, and resumes (issue 26)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from model import archs as arch_registry
from model.archs.gpt2 import GPT, GPTConfig
from model.cli import cli as model_cli
from model.io import CheckpointError, load_model
from tests.train.conftest import TINY_SET
from train import stages as stage_registry
from train.cli import cli as train_cli
from train.options import StageOptions
from train.overrides import apply_overrides
from train.plan_cli import plan_command
from train.presets import preset
from train.stage import LMStage
from train.trainer import RunSpec, train


@dataclass
class ReluGPTConfig(GPTConfig):
    """The seed's GPT with a ReLU MLP whose width is a field of its own."""

    arch: str = "relu-gpt"
    mlp_ratio: int = 2

    def matmul_weights_per_layer(self) -> int:
        return (4 + 2 * self.mlp_ratio) * self.n_embd * self.n_embd

    def param_counts(self) -> tuple[int, int]:
        P, P_lin = super().param_counts()
        fewer = (8 - 2 * self.mlp_ratio) * self.n_embd * self.n_embd * self.n_layer
        return P - fewer, P_lin - fewer


class ReluGPT(GPT):
    def __init__(self, config: ReluGPTConfig):
        super().__init__(config)
        C, hidden = config.n_embd, config.mlp_ratio * config.n_embd
        for block in self.transformer.h:
            block.mlp.c_fc = nn.Linear(C, hidden, bias=config.bias)
            block.mlp.c_proj = nn.Linear(hidden, C, bias=config.bias)
            block.mlp.gelu = nn.ReLU()


@dataclass
class PrefixOptions(StageOptions):
    """The stage's own setting: which share of each block it trains on."""

    fraction: float = 0.5
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"fraction": (0.05, 1.0)}


@dataclass(frozen=True)
class PrefixStage(LMStage):
    """Trains on the first `fraction` of each block only: its own settings, count and loss, no Trainer edit."""

    fraction: float = 0.5

    def for_config(self, cfg) -> PrefixStage:
        return dataclasses.replace(self, fraction=cfg.stage.fraction)

    def _head(self, mask):  # numpy (count, on the host) or torch (the loss)
        cut = mask.copy() if isinstance(mask, np.ndarray) else mask.clone()
        cut[:, max(1, int(mask.shape[1] * self.fraction)):] = False
        return cut

    def count(self, micro) -> int:
        return int(self._head(micro[2]).sum())

    def micro_loss(self, forward, micro):
        x, y, mask = micro
        loss_sum, _ = forward(x, y, self._head(mask))
        return loss_sum, {}


PREFIX = PrefixStage("prefix", "pretrain", "prep wiki", needs_init=False, chat=False, turn_starts=False,
                     help="Pretrain on the first part of each block.", options=PrefixOptions,
                     overlay={"*": {"lr": 2e-3}, "tiny": {"max_steps": 6, "eval_every": 3, "ckpt_every": 3}},
                     plan_note="trains on a prefix of each block")


@pytest.fixture
def relu_arch():
    arch_registry.register(arch_registry.Arch("relu-gpt", ReluGPTConfig, ReluGPT))
    yield
    arch_registry.ARCHS.pop("relu-gpt")


@pytest.fixture
def prefix_stage():
    stage_registry.register(PREFIX)
    yield
    stage_registry.STAGES.pop("prefix")


def tiny(*extra: str):
    return apply_overrides(preset("tiny"), [*TINY_SET, "max_steps=6", "eval_every=3", "ckpt_every=3", *extra])


def test_a_registered_architecture_trains_samples_and_plans(relu_arch, pretrain_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny("arch=relu-gpt", "mlp_ratio=3")
    result = train(cfg, RunSpec("pretrain", pretrain_data, out))
    assert result.step == 6 and np.isfinite(result.val_loss)
    model, info = load_model(out)
    assert isinstance(model, ReluGPT) and info["config"]["arch"] == "relu-gpt" and info["config"]["mlp_ratio"] == 3
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (3 * 32, 32)

    r = CliRunner().invoke(model_cli, ["sample", "--ckpt", str(out), "--prompt", "数学", "--max-new-tokens", "5",
                                       "--temperature", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(plan_command, ["--preset", "tiny", "--set", "arch=relu-gpt", "--set", "mlp_ratio=1",
                                          "--vocab", "512", "--gpu-mem", "1GB"])
    assert r.exit_code == 0, r.output
    assert "relu-gpt" in r.output or "peak" in r.output.lower()


def test_a_field_the_architecture_lacks_is_one_line(relu_arch):
    with pytest.raises(ValueError, match="arch gpt2 has no field 'mlp_ratio'"):
        apply_overrides(preset("tiny"), ["mlp_ratio=3"])
    assert apply_overrides(preset("tiny"), ["arch=relu-gpt", "mlp_ratio=3"]).model.mlp_ratio == 3


def test_a_registered_stage_trains_with_its_own_loss(prefix_stage, pretrain_data, tmp_path):
    cfg = tiny()
    prefix = train(cfg, RunSpec("prefix", pretrain_data, tmp_path / "prefix"))
    plain = train(cfg, RunSpec("pretrain", pretrain_data, tmp_path / "plain"))
    assert prefix.step == plain.step == 6
    assert prefix.train_loss != plain.train_loss  # its own loss, not the pretrain one
    info = json.loads((tmp_path / "prefix" / "checkpoint" / "model.json").read_text())
    assert info["chat"] is False
    run = json.loads((tmp_path / "prefix" / "checkpoint" / "train_config.json").read_text())
    assert run["stage"] == "prefix"
    with pytest.raises(CheckpointError, match="holds a prefix run"):  # resuming it as another stage is refused
        train(tiny("max_steps=9"), RunSpec("pretrain", pretrain_data, tmp_path / "prefix"))


def test_a_checkpoint_without_arch_is_the_seed_gpt(pretrain_data, tmp_path):
    """Checkpoints written before the registry have no ``arch`` in model.json: they load as gpt2."""
    out = tmp_path / "run"
    train(tiny("max_steps=3"), RunSpec("pretrain", pretrain_data, out))
    meta = out / "checkpoint" / "model.json"
    info = json.loads(meta.read_text())
    del info["config"]["arch"]
    meta.write_text(json.dumps(info))
    model, loaded = load_model(out)
    assert type(model) is GPT and model.config.arch == "gpt2" and "arch" not in loaded["config"]
    x = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(model(x)[0]).all()


def test_a_registered_stage_gets_its_command_plan_report_and_resume(prefix_stage, pretrain_data, tmp_path):
    out = tmp_path / "prefix"
    shape = [a for item in TINY_SET if not item.startswith("lr=") for a in ("--set", item)]
    args = ["prefix", "--preset", "tiny", "--data", str(pretrain_data), "--out", str(out), *shape]
    runner = CliRunner()
    assert "prefix" in runner.invoke(train_cli, ["--help"]).output
    r = runner.invoke(train_cli, [*args, "--set", "fraction=0.25"])
    assert r.exit_code == 0, r.output
    run = json.loads((out / "checkpoint" / "train_config.json").read_text())
    assert run["stage"] == "prefix" and run["config"]["stage"] == {"fraction": 0.25}  # its settings, no others
    assert run["config"]["max_steps"] == 6 and run["config"]["lr"] == 2e-3  # its overlay, applied by itself
    r = runner.invoke(train_cli, [*args, "--set", "fraction=0.25", "--max-steps", "8"])  # resumes
    assert r.exit_code == 0, r.output
    assert json.loads((out / "checkpoint" / "model.json").read_text())["step"] == 8
    assert "changed since the checkpoint: max_steps 6 -> 8" in r.output

    for bad, message in ((["--set", "fraction=0"], "fraction must be from 0.05 to 1"),
                         (["--set", "dpo_beta=0.2"], "dpo_beta is a setting of `train dpo`, not of `train prefix`")):
        r = runner.invoke(train_cli, [*args, "--out", str(tmp_path / "bad"), *bad])
        assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "bad").exists()

    r = runner.invoke(plan_command, ["--stage", "prefix", "--preset", "tiny", "--vocab", "512", "--gpu-mem", "1GB"])
    assert r.exit_code == 0 and "prefix: trains on a prefix of each block" in r.output, r.output
    r = runner.invoke(train_cli, ["report", str(out)])
    assert r.exit_code == 0 and "prefix" in r.output and "step 8" in r.output, r.output
