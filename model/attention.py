"""What every architecture's attention shares: the KV cache and the causal (or per-row) mask.

An attention layer computes its own q, k, v (any number of key/value heads: grouped-query attention
stores only those), then calls `attend`, which writes k and v into the cache when there is one, builds
the mask that the positions need and runs `F.scaled_dot_product_attention` (flash / memory-efficient
kernels where the device has them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer for positions ``0 .. length-1``, preallocated to `max_len`.

    A model's forward with ``cache=cache`` writes the new tokens' keys/values at ``cache.length`` (or at
    `start_pos` when given, which rewinds the cache: e.g. to reuse a shared prompt prefix) and then
    advances ``cache.length``.

    Rows of different lengths: with `start_pos` a list (one start per row), row b's tokens are written
    at its own positions and each row attends over the whole buffer with the positions past its own
    masked out. The caller keeps the rows' lengths; ``cache.length`` is not used. Every row always
    sees all `max_len` key slots, so a row's arithmetic does not depend on the other rows' lengths.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               start: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `k`, `v` (B, H, T, D) at positions start..start+T-1; return all keys/values so far.

        `start` may be a (B,) tensor, one start per row: the whole buffers are returned then.
        The buffers are allocated on first use with the keys' dtype and head count, so a cache filled
        under bf16 autocast holds bf16, and one of a grouped-query model only its key/value heads.
        """
        if self.k[layer] is None:
            B, H, _, D = k.shape
            self.k[layer] = k.new_zeros(B, H, self.max_len, D)
            self.v[layer] = v.new_zeros(B, H, self.max_len, D)
        if isinstance(start, torch.Tensor):
            pos = start[:, None] + torch.arange(k.size(2), device=k.device)  # (B, T)
            rows = torch.arange(k.size(0), device=k.device)[:, None]
            self.k[layer][rows, :, pos] = k.transpose(1, 2)  # indexed as (B, T, H, D)
            self.v[layer][rows, :, pos] = v.transpose(1, 2)
            return self.k[layer], self.v[layer]
        end = start + k.size(2)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def positions(T: int, start: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Positions of `T` new tokens: (T,) from one start, or (B, T) from a (B,) tensor of starts."""
    if isinstance(start, torch.Tensor):
        return start[:, None] + torch.arange(T, device=device)
    return torch.arange(start, start + T, device=device)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache | None, layer: int,
           start: int | torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention of q (B, H, T, D) over k, v (B, H_kv, T, D) and whatever the cache holds before
    them; returns (B, H, T, D). H_kv may divide H (grouped-query attention: each key/value head serves
    H / H_kv query heads)."""
    T = q.size(2)
    mask, causal = None, True
    if cache is not None:
        k, v = cache.update(layer, k, v, start)
        if isinstance(start, torch.Tensor):
            # One start per row: a query sees its own row's keys up to its position; the rest of the
            # row (not written yet, or left there by an earlier sequence) is masked out.
            causal = False
            mask = (torch.arange(k.size(2), device=q.device) <= positions(T, start, q.device)[..., None])[:, None]
        elif start > 0:
            # Queries sit at start..start+T-1 and see every key up to their own position. SDPA's
            # is_causal aligns to the top-left corner, which is only right when start == 0.
            causal = False
            if T > 1:
                mask = torch.arange(start + T, device=q.device)[None, :] <= positions(T, start, q.device)[:, None]
    gqa = {"enable_gqa": True} if k.size(1) != q.size(1) else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout, **gqa)
