"""bench.recipe's arithmetic: tokens to reach a figure (interpolated between evals) and bpb at a time."""

from __future__ import annotations

import numpy as np
import pytest

from bench.recipe import Curve


def test_tokens_to_reach_and_bpb_at_seconds():
    c = Curve("x", 1e-3, np.array([0, 100, 200]), np.array([0.0, 10.0, 20.0]), np.array([5.0, 4.0, 3.0]), 0)
    assert c.tokens_to_reach(3.5) == pytest.approx(150)
    assert c.tokens_to_reach(2.0) is None and c.tokens_to_reach(6.0) == 0
    assert c.bpb_at_seconds(15.0) == pytest.approx(3.5) and c.final == 3.0
