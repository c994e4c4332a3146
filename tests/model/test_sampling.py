"""Logits -> next token: top-k, top-p, repetition penalty, temperature 0, option checks."""

from __future__ import annotations

import math

import pytest
import torch

from model.sampling import SamplingParams, apply_repetition_penalty, sample_next


def draws(logits: torch.Tensor, params: SamplingParams, n: int = 400) -> set[int]:
    g = torch.Generator().manual_seed(0)
    return {int(sample_next(logits, params, g)) for _ in range(n)}


def test_top_k_keeps_only_the_k_likeliest():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, -1.0]])
    assert draws(logits, SamplingParams(temperature=5.0, top_k=2)) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert draws(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.6)) == {0, 1}  # 0.5 < 0.6 <= 0.8
    assert draws(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.5)) == {0}
    assert draws(logits, SamplingParams(temperature=1.0, top_k=0, top_p=1.0)) == {0, 1, 2, 3}
    # top-k first, then top-p within the k: probabilities renormalised over {0, 1}: 0.625, 0.375
    assert draws(logits, SamplingParams(temperature=1.0, top_k=2, top_p=0.6)) == {0}


def test_temperature_zero_is_argmax_per_row():
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 1.0, 4.0]])
    assert sample_next(logits, SamplingParams(temperature=0)).tolist() == [1, 0]


def test_repetition_penalty_lowers_seen_tokens_either_sign():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits
    # greedy with a strong penalty moves off a token it has already seen
    assert int(sample_next(torch.tensor([[3.0, 2.0]]), SamplingParams(temperature=0, repetition_penalty=2.0),
                           seen=torch.tensor([[True, False]]))) == 1


def test_sampling_frequencies_follow_the_softmax():
    logits = torch.tensor([[math.log(0.7), math.log(0.3)]])
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits.expand(4000, -1), SamplingParams(temperature=1.0, top_k=0), g)
    assert abs(picks.float().mean().item() - 0.3) < 0.03


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(max_new_tokens=0), dict(repetition_penalty=0), dict(num_samples=0)])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
