"""Each row's summed cross-entropy, with a gradient per row: what a preference loss (DPO, SimPO, ORPO)
needs, where language modelling needs only the sum over all rows (`model.lm.ChunkedLinearCrossEntropy`).

A pair loss weighs each row's log-likelihood by its own factor (sigmoid of the pair's margin), so the
backward cannot be precomputed in the forward pass as the summed loss's is: the weight gradient would
need one V x C tensor per row. Instead each chunk of tokens is checkpointed: the forward keeps only its
per-token losses, and the backward recomputes that chunk's logits. Only one chunk of the 151,680-wide
logits exists at a time, as in training; the output layer costs one extra matmul per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_losses(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight).float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)


def row_losses(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
               chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sums, counts)``, each (B,) fp32: row b's cross-entropy summed over its positions where `mask`
    (B, T) is true, and how many those are. `h` is (B, T, C); `targets` (B, T)."""
    B, T, C = h.shape
    flat_h, flat_t = h.reshape(-1, C), targets.reshape(-1)
    per_token = torch.cat([
        checkpoint(_chunk_losses, flat_h[s : s + chunk], weight, flat_t[s : s + chunk], use_reentrant=False)
        for s in range(0, B * T, chunk)
    ])
    mask = mask.reshape(B, T).bool()
    return torch.where(mask, per_token.view(B, T), 0.0).sum(dim=1), mask.sum(dim=1, dtype=torch.float32)
