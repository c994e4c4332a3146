"""Learning-rate schedule and weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch

from model.gpt import GPT, GPTConfig
from train.config import TrainConfig
from train.optim import build_optimizer, lr_at


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
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)
