"""The GPT of record: a GPT-2-style decoder, readable top to bottom.

Pre-norm blocks (LayerNorm before attention and before the MLP), learned positions, a GELU MLP four
times as wide, input and output embeddings tied, `F.scaled_dot_product_attention` (flash / memory-
efficient kernels where the device has them). The GELU is the tanh approximation, GPT-2's own, so an
export to Hugging Face `GPT2LMHeadModel` uses ``activation_function="gelu_pytorch_tanh"`` (the same
PyTorch kernel, bit for bit) or ``"gelu_new"`` (the same formula).

Two things differ from a textbook GPT, both for the 151,680-wide Qwen2 vocabulary:

* The loss never materialises the full logits. The output layer and cross-entropy run over chunks
  of tokens (`ChunkedLinearCrossEntropy`), so only one chunk's logits exist at a time, and they
  return the SUM of per-token losses and the number of trained tokens: the trainer divides by the
  number of trained tokens in the whole effective batch (all micro-steps, all ranks), which makes
  masked SFT and DDP exact.
* Attention takes an optional `KVCache`, so generation (`model.generate`) processes a prompt once and
  then one token at a time. A server decoding several requests at once gives one start position per
  row instead (rows of different lengths in one cache; see `KVCache`).

No training or sampling code lives here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 256
    vocab_size: int = 151680  # len(tokenizer) padded to a multiple of 128 (prep.tokenizer.pad_vocab_size)
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    # Tokens per chunk of the output layer + loss: 1024 x 151,680 fp32 logits = 620 MB at a time.
    # It changes memory, not results; checkpoints written before it existed get this default.
    loss_chunk_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}")
        return cls(**d)


class KVCache:
    """Keys and values of every layer for positions ``0 .. length-1``, preallocated to `max_len`.

    `GPT.forward(idx, cache=cache)` writes the new tokens' keys/values at ``cache.length`` (or at
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
        The buffers are allocated on first use with the keys' dtype, so a cache filled under bf16
        autocast holds bf16 (half the memory, and no casts at every step).
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


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int | torch.Tensor = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        mask, causal = None, True
        if cache is not None:
            k, v = cache.update(layer, k, v, start)
            if isinstance(start, torch.Tensor):
                # One start per row: a query sees its own row's keys up to its position; the rest of
                # the row (not written yet, or left there by an earlier sequence) is masked out.
                causal = False
                q_pos = start[:, None] + torch.arange(T, device=x.device)  # (B, T)
                mask = (torch.arange(k.size(2), device=x.device) <= q_pos[..., None])[:, None]  # (B, 1, T, L)
            elif start > 0:
                # Queries sit at start..start+T-1 and see every key up to their own position. SDPA's
                # is_causal aligns to the top-left corner, which is only right when start == 0.
                causal = False
                if T > 1:
                    q_pos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = torch.arange(start + T, device=x.device)[None, :] <= q_pos
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int | torch.Tensor = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, start)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Parameter names follow Hugging Face's GPT2LMHeadModel (``transformer.h.0.attn.c_attn`` ...), with
    `nn.Linear` weights (out, in) where GPT-2's Conv1D stores (in, out); the output layer is ``wte``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        ))
        self.apply(self._init_weights)
        # GPT-2: each residual branch's output projection is scaled so the residual stream's variance
        # does not grow with depth (two branches per layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied output layer counted once); without the embeddings if asked."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6·N + 12·L·C·T.

        N counts the weights of every matmul (per layer 4·C² attention + 8·C² MLP, plus the V·C output
        layer; embedding look-ups, biases and norms are free). 6·N is 2 FLOPs per multiply-add, times 3
        for forward + backward. 12·L·C·T is attention's two T-long matmuls (QKᵀ and AV, 2·2·C·T per
        token per layer, times 3), counted without the causal saving as PaLM and nanoGPT do.
        """
        c, n_layer = self.config.n_embd, self.config.n_layer
        t = seq_len or self.config.block_size
        n = n_layer * 12 * c * c + self.config.vocab_size * c
        return 6 * n + 12 * n_layer * c * t

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """An empty KV cache for up to `max_len` positions (default block_size)."""
        return KVCache(self.config.n_layer, max_len or self.config.block_size)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      start_pos: int | Sequence[int] | None = None) -> torch.Tensor:
        """Final (layer-normed) hidden states (B, T, C) of tokens `idx` (B, T).

        `start_pos` a list: one start per row of `cache` (rows of different lengths, see `KVCache`).
        """
        T = idx.size(1)
        per_row = isinstance(start_pos, (list, tuple))
        if per_row and cache is None:
            raise ValueError("start positions per row need a cache")
        start = 0 if cache is None else (cache.length if start_pos is None else start_pos)
        last = max(start) if per_row else start
        limit = self.config.block_size if cache is None else min(self.config.block_size, cache.max_len)
        if last + T > limit:
            raise ValueError(f"positions {last}..{last + T - 1} exceed the context of {limit} tokens")
        if per_row:
            start = torch.tensor(start, device=idx.device)
            pos = start[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        else:
            pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, start)
        if cache is not None and not per_row:
            cache.length = start + T
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                *, cache: KVCache | None = None, start_pos: int | Sequence[int] | None = None,
                last_only: bool = False):
        """Logits, or the summed loss.

        * ``targets`` None: fp32 logits (B, T, V), or (B, 1, V) for the last position if `last_only`
          (what generation needs; a prompt's other logits are never built). With `cache`, the tokens sit
          at positions ``cache.length ..`` (or `start_pos` .., one start per row if a list) and their
          keys/values are stored.
        * ``targets`` (B, T) given: ``(loss_sum, n_targets)``, two fp32 scalars: the cross-entropy summed
          over the positions where `loss_mask` (B, T) is nonzero (every position if None) and how many
          those are. Divide by the token count of the whole effective batch, not per micro-batch.
        """
        h = self.hidden_states(idx, cache, start_pos)
        weight = self.transformer.wte.weight
        if targets is None:
            if last_only:
                h = h[:, -1:, :]
            return F.linear(h, weight).float()
        mask = torch.ones_like(targets, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
        mask = mask.reshape(-1)
        loss_sum = ChunkedLinearCrossEntropy.apply(
            h.reshape(-1, h.size(-1)), weight, targets.reshape(-1), mask, self.config.loss_chunk_tokens, _matmul_dtype(h)
        )
        return loss_sum, mask.sum(dtype=torch.float32)


def _matmul_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give the output-layer matmul (the hidden states' own otherwise)."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i mask_i · CE(h_i · Wᵀ, target_i), computed chunk by chunk so only one chunk's logits exist.

    The forward pass computes, per chunk, the logits (matmul in the autocast dtype), the log-sum-exp
    and loss in fp32, and right away the gradients w.r.t. the chunk's hidden states and the weight
    (softmax − one-hot, zeroed where masked). Backward only scales those by the incoming gradient, so
    nothing is recomputed and peak memory is a V·C fp32 weight gradient plus one chunk of fp32 logits
    and its temporaries (logsumexp's ``logits - max`` is a second chunk: `train.plan` counts them).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                chunk: int, dtype: torch.dtype) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(dtype)
        loss = torch.zeros((), device=h.device, dtype=torch.float32)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.size(0), chunk):
                hc = h[s : s + chunk].to(dtype)
                logits = (hc @ w.t()).float()
                tc, mc = targets[s : s + chunk], mask[s : s + chunk]
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, tc[:, None]).squeeze(1)
                loss += torch.where(mc, lse - picked, 0.0).sum()
                if need_grad:
                    # d(loss)/d(logits) = softmax - onehot(target), zero on untrained positions: their
                    # log-sum-exp is set to +inf so that exp() gives 0 in the same pass
                    lse_or_inf = torch.where(mc, lse, torch.inf)
                    g = torch.exp_(logits.sub_(lse_or_inf[:, None]))
                    g.scatter_add_(1, tc[:, None], -mc[:, None].to(g.dtype))
                    g = g.to(dtype)
                    grad_h[s : s + chunk] = (g @ w).to(h.dtype)
                    if dtype == torch.float32:
                        grad_w.addmm_(g.t(), hc)  # no V x C temporary
                    else:
                        grad_w += (g.t() @ hc).float()
                # drop this chunk's logits now: otherwise they live on while the next chunk's are computed
                logits = g = None
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None
