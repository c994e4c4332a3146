"""The pair losses against their formulas, on hand-made log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from train.pref_loss import Objective

# two pairs: rows (chosen 0, chosen 1, rejected 0, rejected 1); NLL = -log-prob
NLL = torch.tensor([4.0, 6.0, 8.0, 5.0])
COUNTS = torch.tensor([2.0, 3.0, 4.0, 5.0])
REF = torch.tensor([[-5.0, -7.0], [-6.0, -4.0]])  # (chosen, rejected) per pair


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dpo_is_ln2_when_the_policy_is_the_reference_and_follows_its_formula():
    loss, sums = Objective("dpo", beta=0.1).pair_losses(NLL, COUNTS, -NLL.view(2, 2).t())
    assert loss.tolist() == pytest.approx([math.log(2)] * 2) and sums["reward_acc"] == 0
    loss, sums = Objective("dpo", beta=0.1).pair_losses(NLL, COUNTS, REF)
    margins = [0.1 * ((-4 + 5) - (-8 + 7)), 0.1 * ((-6 + 6) - (-5 + 4))]  # 0.2, 0.1
    assert loss.tolist() == pytest.approx([-math.log(sig(m)) for m in margins])
    assert sums["reward_acc"] == 2 and sums["margin"].item() == pytest.approx(sum(margins))
    assert sums["chosen_logp"] == -10 and sums["rejected_logp"] == -13 and sums["chosen_shift"] == 1


def test_simpo_and_orpo_use_length_normalised_log_probs_and_no_reference():
    simpo, _ = Objective("simpo", beta=2.0, gamma=1.0).pair_losses(NLL, COUNTS, torch.zeros(2, 2))
    mean = [(-2.0, -2.0), (-2.0, -1.0)]  # (chosen, rejected) mean log-probs
    assert simpo.tolist() == pytest.approx([-math.log(sig(2.0 * (c - r) - 1.0)) for c, r in mean])
    orpo, sums = Objective("orpo", lam=0.1).pair_losses(NLL, COUNTS, torch.zeros(2, 2))
    odds = lambda p: p - math.log(1 - math.exp(p))  # noqa: E731 - log odds of a mean log-prob
    assert orpo.tolist() == pytest.approx([-c - 0.1 * math.log(sig(odds(c) - odds(r))) for c, r in mean], rel=1e-5)
    assert sums["reward_acc"] == 0  # pair 0 ties, pair 1 prefers the rejected reply


def test_a_falling_chosen_log_prob_is_warned_about():
    from train.stages import get

    dpo = get("dpo")
    assert dpo.eval_note({"val_loss": 0.5, "val_chosen_shift": 0.3}) is None
    assert "fell by 1.500 nats" in dpo.eval_note({"val_loss": 0.5, "val_chosen_shift": -1.5})
    assert get("sft").eval_note({"val_loss": 1.0}) is None
