"""The GPT: masked chunked loss against a hand computation, KV cache against recomputation, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.archs.gpt2 import GPT, GPTConfig

V = 384  # the bytes tokenizer's 259 ids padded to a multiple of 128


def tiny(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 24, "vocab_size": V, **kw}))


def batch(seed: int = 1, B: int = 3, T: int = 24):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 259, (B, T), generator=g)
    targets = torch.randint(0, 259, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.4
    return idx, targets, mask


def grads(model: GPT) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def hand_loss(model: GPT, idx, targets, mask) -> torch.Tensor:
    """The textbook way: full fp32 logits, per-token cross-entropy, masked sum."""
    logits = model(idx)
    ce = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")
    return (ce * mask.reshape(-1).float()).sum()


@pytest.mark.parametrize("chunk", [1, 7, 24, 1000])  # 72 tokens: one per chunk, ragged last chunk, exact, one chunk
def test_masked_loss_and_grads_equal_hand_computation(chunk):
    model = tiny(loss_chunk_tokens=chunk)
    idx, targets, mask = batch()
    loss_sum, n = model(idx, targets, mask)
    loss_sum.backward()
    got = grads(model)
    model.zero_grad()
    ref = hand_loss(model, idx, targets, mask)
    ref.backward()
    assert n.item() == mask.sum().item()
    assert loss_sum.item() == pytest.approx(ref.item(), rel=1e-5)
    for name, p in model.named_parameters():
        # fp32 sums in a different order: equal to ~1e-6 of the gradient's scale
        err = (got[name] - p.grad).abs().max().item()
        assert err <= 1e-5 * p.grad.abs().max().item() + 1e-8, (name, err)


def test_no_mask_means_every_position():
    model = tiny()
    idx, targets, _ = batch()
    loss_sum, n = model(idx, targets)
    assert n.item() == targets.numel()
    assert loss_sum.item() == pytest.approx(hand_loss(model, idx, targets, torch.ones_like(targets)).item(), rel=1e-5)


def test_untrained_targets_change_nothing():
    """Targets where the mask is 0 (user turns, padding) have no effect on the loss or any gradient."""
    model = tiny()
    idx, targets, mask = batch()
    loss_a, _ = model(idx, targets, mask)
    loss_a.backward()
    ga = grads(model)
    model.zero_grad()
    other = torch.where(mask, targets, (targets + 17) % 259)
    assert not torch.equal(other, targets)
    loss_b, _ = model(idx, other, mask)
    loss_b.backward()
    assert loss_a.item() == loss_b.item()
    for name, p in model.named_parameters():
        assert torch.equal(ga[name], p.grad), name


def test_all_zero_mask_gives_zero_loss_and_zero_grads():
    model = tiny()
    idx, targets, mask = batch()
    loss_sum, n = model(idx, targets, torch.zeros_like(mask))
    loss_sum.backward()
    assert loss_sum.item() == 0 and n.item() == 0
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_loss_under_bf16_autocast_is_close_and_grads_are_fp32():
    model = tiny()
    idx, targets, mask = batch()
    ref, _ = model(idx, targets, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_sum, _ = model(idx, targets, mask)
    assert loss_sum.dtype == torch.float32
    assert loss_sum.item() == pytest.approx(ref.item(), rel=2e-2)
    loss_sum.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_loss_builds_no_gradients():
    model = tiny()
    idx, targets, mask = batch()
    with torch.no_grad():
        loss_sum, _ = model(idx, targets, mask)
    assert not loss_sum.requires_grad


def test_kv_cache_logits_equal_full_recompute():
    model = tiny().eval()
    idx, _, _ = batch(B=2)
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        parts = [model(idx[:, :5], cache=cache), model(idx[:, 5:9], cache=cache)]  # prompt, then a chunk
        parts += [model(idx[:, t : t + 1], cache=cache) for t in range(9, idx.size(1))]  # one at a time
        assert cache.length == idx.size(1)
        torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
        # start_pos rewinds: recompute the tail after position 12 into the same cache
        tail = model(idx[:, 12:], cache=cache, start_pos=12)
        torch.testing.assert_close(tail, full[:, 12:], rtol=1e-5, atol=1e-5)
        last = model(idx[:, :10], cache=model.new_cache(), last_only=True)
        torch.testing.assert_close(last, full[:, 9:10], rtol=1e-5, atol=1e-5)


def test_context_overflow_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_tiny_model_overfits_a_fixed_batch():
    model = tiny(n_layer=2, n_embd=64, n_head=4)
    idx, targets, mask = batch(B=4, T=24)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(60):
        loss_sum, n = model(idx, targets, mask)
        loss = loss_sum / n
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.0  # about ln(384) at initialisation
    assert loss.item() < 0.05


def test_flops_per_token_counts_every_matmul_weight():
    model = tiny()
    c = model.config
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    matmul_weights += model.transformer.wte.weight.numel()  # the tied output layer
    assert model.flops_per_token() == 6 * matmul_weights + 12 * c.n_layer * c.n_embd * c.block_size


def test_gpt2_init_scales_residual_projections():
    model = tiny(n_layer=8, n_embd=256, n_head=4)
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert block.attn.c_proj.bias.abs().max().item() == 0


def test_config_rejects_bad_shapes_and_unknown_fields():
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="unknown model config fields"):
        GPTConfig.from_dict({"n_layer": 2, "rotary": True})
