"""The next-token loss mixed with distillation from a teacher's sparse targets, chunk by chunk.

For each trained position i, with the true next token y_i and the teacher's sampled ids t_ik drawn with
empirical probabilities w_ik = count_ik / K (`model.teach.capture`):

    ce_i = -log p(y_i)                      kd_i = -sum_k w_ik log p(t_ik)
    loss = sum_i mask_i [(1 - W) ce_i + W kd_i]      (W = kd_weight: 0 plain, 1 distillation only)

kd_i is the cross-entropy of the student against the teacher's empirical distribution at the sampled
ids (Sparse Logit Sampling's random-sampling KD: an unbiased estimate of the full distillation loss's
gradient). Both are "softmax minus a weighted one-hot", so this is `model.lm.ChunkedLinearCrossEntropy`
with K + 1 targets per row: the same chunks, the same precomputed gradients, the full logits never exist
at once, and nothing new beyond a (chunk, K) gather. The parts ``ce`` and ``kd`` come back summed for
logging (no gradient); the caller divides all three by the step's target count, as for plain training.
"""

from __future__ import annotations

import torch

DEFAULT_K = 12  # teacher samples per token that ``model teach`` stores by default (the paper's ~12)


class ChunkedLinearDistillation(torch.autograd.Function):
    """``(loss_sum, ce_sum, kd_sum)`` of hidden states `h` (N, C) through `weight` (V, C); see the module doc."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                t_ids: torch.Tensor, t_w: torch.Tensor, kd_weight: float, chunk: int, dtype: torch.dtype):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(dtype)
        sums = torch.zeros(3, device=h.device, dtype=torch.float32)  # loss, ce, kd
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        ce_scale = 1.0 - kd_weight
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.size(0), chunk):
                hc = h[s : s + chunk].to(dtype)
                logits = (hc @ w.t()).float()
                tc, mc = targets[s : s + chunk], mask[s : s + chunk]
                ic, wc = t_ids[s : s + chunk], t_w[s : s + chunk].float() * mc[:, None]
                lse = torch.logsumexp(logits, dim=-1)
                ce = torch.where(mc, lse - logits.gather(1, tc[:, None]).squeeze(1), 0.0)
                kd = (wc * (lse[:, None] - logits.gather(1, ic))).sum(1)
                sums += torch.stack([(ce_scale * ce + kd_weight * kd).sum(), ce.sum(), kd.sum()])
                if need_grad:
                    # d(loss)/d(logits) = softmax · (total target weight) - the weights at the target ids;
                    # untrained rows get lse = +inf, so their softmax is 0 in the same pass
                    total = ce_scale * mc.float() + kd_weight * wc.sum(1)
                    g = torch.exp_(logits.sub_(torch.where(mc, lse, torch.inf)[:, None])).mul_(total[:, None])
                    g.scatter_add_(1, tc[:, None], -ce_scale * mc[:, None].to(g.dtype))
                    g.scatter_add_(1, ic, -kd_weight * wc)
                    g = g.to(dtype)
                    grad_h[s : s + chunk] = (g @ w).to(h.dtype)
                    if dtype == torch.float32:
                        grad_w.addmm_(g.t(), hc)
                    else:
                        grad_w += (g.t() @ hc).float()
                logits = g = None  # free this chunk's logits before the next chunk's exist
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ce_sum, kd_sum = sums[1].clone(), sums[2].clone()
        ctx.mark_non_differentiable(ce_sum, kd_sum)
        return sums[0].clone(), ce_sum, kd_sum

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_ce, _grad_kd):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None, None, None


def distill_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                 teacher: tuple[torch.Tensor, torch.Tensor, float], chunk: int, dtype: torch.dtype):
    """``(loss_sum, {"ce": ce_sum, "kd": kd_sum})`` for (B, T, C) hidden states; `teacher` is (ids (B, T, K),
    counts (B, T, K), kd_weight)."""
    ids, counts, kd_weight = teacher
    k = ids.size(-1)
    t_w = counts.reshape(-1, k).float() / k
    loss, ce, kd = ChunkedLinearDistillation.apply(
        h.reshape(-1, h.size(-1)), weight, targets.reshape(-1), mask.reshape(-1), ids.reshape(-1, k).long(), t_w,
        float(kd_weight), chunk, dtype)
    return loss, {"ce": ce, "kd": kd}
