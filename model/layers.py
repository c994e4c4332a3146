"""Decoder parts several architectures share, taking plain sizes (no architecture's config).

RMSNorm, the rotary position tables and their rotation (Hugging Face's ``rotate_half`` layout: the two
halves of a head rotate together, llama.cpp's NEOX rope), and the SwiGLU MLP. An architecture
(`model.archs`) builds its blocks from these with its own sizes and names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, no bias (PyTorch's fused op)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)  # bf16 q, k under autocast: one dtype fuses


def rope_tables(head_dim: int, length: int, theta: float,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim) of every position, in fp32 as Hugging Face computes them."""
    D = head_dim
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))
    freqs = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by position: x·cos + rotate_half(x)·sin, the halves of a head paired."""
    half = x.size(-1) // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)), no biases; `hidden` is the gate's and up's width."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
