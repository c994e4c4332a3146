"""Per-row losses (`forward(..., per_row=True)`): the same sums as the summed loss, and each row's own gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.archs.gpt2 import GPT, GPTConfig


def test_per_row_sums_and_gradients_match_full_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64, loss_chunk_tokens=5))
    x, y = torch.randint(0, 64, (3, 8)), torch.randint(0, 64, (3, 8))
    mask = torch.rand(3, 8) > 0.3
    rows, counts = model(x, y, mask, per_row=True)
    total, n = model(x, y, mask)
    assert torch.allclose(rows.sum(), total, atol=1e-4) and counts.sum() == n
    assert counts.tolist() == mask.sum(1).float().tolist()
    weights = torch.tensor([1.0, -2.0, 0.5])  # a pair loss weighs each row differently
    (rows * weights).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ce = F.cross_entropy(model(x).view(-1, 64), y.view(-1), reduction="none").view(3, 8)
    ((ce * mask).sum(1) * weights).sum().backward()
    for a, p in zip(got, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-5)
