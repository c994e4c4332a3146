"""Learning-rate schedule and weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch

from model.archs.gpt2 import GPT, GPTConfig
from train.config import TrainConfig
from train.optim import Optimizer, lr_at


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.max_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))  # rising warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # then never rising
    assert lrs[-1] == pytest.approx(1e-4)  # the floor at the last step
    mid = 10 + (110 - 1 - 10) / 2
    assert lr_at(int(mid), cfg) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)), rel=0.02)


def test_decay_only_on_matrices():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=128))
    opt = Optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu")).parts["adamw"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest():
    from model.archs.qwen3 import Qwen3, Qwen3Config
    for model in (GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=128)),
                  Qwen3(Qwen3Config(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=128, tie_embeddings=False))):
        cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02)
        opt = Optimizer(model, cfg, torch.device("cpu"))
        muon = {id(p) for g in opt.parts["muon"].param_groups for p in g["params"]}
        adamw = {id(p) for g in opt.parts["adamw"].param_groups for p in g["params"]}
        assert not muon & adamw and muon | adamw == {id(p) for p in model.parameters()}
        assert id(model.output_weight()) in adamw and len(muon) == 2 * (4 if isinstance(model, GPT) else 7)
        opt.set_lr(5e-4)
        assert opt.parts["muon"].param_groups[0]["lr"] == pytest.approx(0.01)
        assert opt.parts["adamw"].param_groups[0]["lr"] == pytest.approx(5e-4)


def test_a_saved_state_of_the_other_optimizer_is_refused(tmp_path):
    from model.io import CheckpointError
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=128))
    adamw = Optimizer(model, TrainConfig(), torch.device("cpu"))
    muon = Optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="holds adamw state, this run asks for optimizer=muon"):
        muon.check_state(adamw.state_dict(), tmp_path)
    with pytest.raises(CheckpointError, match="holds muon state"):
        adamw.check_state(muon.state_dict(), tmp_path)
    muon.check_state(muon.state_dict(), tmp_path)


@pytest.mark.parametrize("sets, message", [
    (["muon_lr=0.05"], "muon_lr set but optimizer is adamw; add --set optimizer=muon"),
    (["optimizer=lion"], "optimizer must be adamw or muon"),
    (["optimizer=muon", "muon_momentum=1"], "0 <= muon_momentum < 1"),
])
def test_wrong_optimizer_settings_are_one_line_errors(sets, message):
    from train.overrides import apply_overrides
    from train.presets import preset
    with pytest.raises(ValueError, match=message) as e:
        apply_overrides(preset("tiny"), sets)
    assert "\n" not in str(e.value)
