"""What every architecture shares: its config's common fields and the causal LM's forward.

An architecture (`model.arch`) is a `ModelConfig` subclass and a `CausalLM` subclass. The model
supplies the body (`hidden_states`) and names its output layer (`output_weight`); this module turns
them into logits or the summed loss, the same way for all of them:

* The loss never materialises the full logits. The output layer and cross-entropy run over chunks
  of tokens (`ChunkedLinearCrossEntropy`), so only one chunk's logits exist at a time, and they
  return the SUM of per-token losses and the number of trained tokens: the trainer divides by the
  number of trained tokens in the whole effective batch (all micro-steps, all ranks), which makes
  masked SFT and DDP exact.
* Attention takes an optional `KVCache` (`model.attention`), so generation processes a prompt once
  and then one token at a time. A server decoding several requests at once gives one start position
  per row instead (rows of different lengths in one cache).

The config answers the questions other code used to answer by reaching into the model: which fields
decide the weights' shapes (`SHAPE_FIELDS`: a fine-tune keeps them from its --init), the shapes the
weights file must hold (`expected_shapes`, checked before anything is allocated), the parameter counts
and what one layer saves for backward (`param_counts`, `layer_activations`: the memory plan, by
arithmetic), and the FLOPs of a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attention import KVCache
from model.distill_loss import distill_loss
from model.row_loss import row_losses


@dataclass
class ModelConfig:
    """The fields every architecture has; a subclass adds its own and sets `arch`."""

    arch: str = ""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 256
    vocab_size: int = 151680  # len(tokenizer) padded to a multiple of 128 (prep.tokenizer.pad_vocab_size)
    dropout: float = 0.0
    # Tokens per chunk of the output layer + loss: 1024 x 151,680 fp32 logits = 620 MB at a time.
    # It changes memory, not results; checkpoints written before it existed get this default.
    loss_chunk_tokens: int = 1024

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ()  # fields that decide the weights' shapes
    # Training knobs: fields a run may change without changing the model's function (a fine-tune or a
    # resumed run takes every other field from the model it continues; `train.inherit`).
    KNOBS: ClassVar[tuple[str, ...]] = ("dropout", "loss_chunk_tokens")
    BLOCKS: ClassVar[str] = ""  # the blocks' parameter prefix: "transformer.h" names transformer.h.3.attn...
    # Sane bounds of each numeric field, checked wherever a config is made (a preset, --set, a model.json):
    # beyond them a value is a typo or a damaged file, never a model (rope_theta=1e-300 gives NaN tables).
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "n_layer": (1, 1024), "n_head": (1, 1024), "n_embd": (1, 65536), "block_size": (1, 1 << 20),
        "vocab_size": (1, 1 << 24), "dropout": (0.0, 0.99), "loss_chunk_tokens": (1, 1 << 24)}

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def ranges(cls) -> dict[str, tuple[float, float]]:
        """`RANGES` of this class and every base (a subclass adds its own fields' bounds)."""
        merged: dict[str, tuple[float, float]] = {}
        for klass in reversed(cls.__mro__):
            merged |= vars(klass).get("RANGES", {})
        return merged

    def check(self) -> None:
        """Raise ValueError (naming the fields) for a value out of its range or a combination that cannot be built."""
        types = {f.name: f.type for f in fields(self)}
        for name, (low, high) in self.ranges().items():
            value = getattr(self, name)
            integer = types[name] in (int, "int")
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if not ok or isinstance(value, bool) or not low <= value <= high:
                span = f"an integer from {low:,} to {high:,}" if integer else f"a number from {low:g} to {high:g}"
                raise ValueError(f"{name} = {value!r}, expected {span}")
        for name, kind in types.items():  # a switch is a boolean, not "yes" or 1 from a damaged model.json
            if kind in (bool, "bool") and not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} = {getattr(self, name)!r}, expected true or false")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        unknown = sorted(set(d) - cls.field_names())
        if unknown:
            raise ValueError(f"unknown model config fields {unknown} for arch {cls.arch_name()!r}")
        return cls(**{**d, "arch": cls.arch_name()})

    def block_index(self, tensor: str) -> int | None:
        """The block a weight belongs to (``transformer.h.3.attn.c_attn.weight`` -> 3), or None."""
        prefix = self.BLOCKS + "."
        if not tensor.startswith(prefix):
            return None
        index = tensor[len(prefix):].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    @classmethod
    def arch_name(cls) -> str:
        return next(f.default for f in fields(cls) if f.name == "arch")

    # -- questions the rest of the house asks (each architecture answers) --------------------------

    def expected_shapes(self) -> dict[str, list[int]]:
        """A few tensors of the weights file and their shapes, checked before the model is built."""
        raise NotImplementedError

    def param_counts(self) -> tuple[int, int]:
        """(P, P_lin): all parameters (a tied output layer once), and those of the blocks' matmuls."""
        raise NotImplementedError

    def layer_activations(self, s, micro: int) -> dict[str, int]:
        """Bytes one block saves for its backward, tensor by tensor, for `train.plan.Setup` `s`."""
        raise NotImplementedError

    def backward_peak_extra(self, s, micro: int) -> int:
        """Bytes of the temporaries at the start of the last block's backward (its widest activation
        gradients and weight gradient), beside the output layer's gradients (`train.plan.plan_step`)."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6·N + 12·L·C·T.

        N counts the weights of every matmul (the blocks' plus the V·C output layer; embedding look-ups,
        biases and norms are free). 6·N is 2 FLOPs per multiply-add, times 3 for forward + backward.
        12·L·C·T is attention's two T-long matmuls (QKᵀ and AV, 2·2·C·T per token per layer, times 3),
        counted without the causal saving as PaLM and nanoGPT do (C here is the attention width).
        """
        t = seq_len or self.block_size
        n = self.n_layer * self.matmul_weights_per_layer() + self.vocab_size * self.n_embd
        return 6 * n + 12 * self.n_layer * self.attention_width() * t

    def matmul_weights_per_layer(self) -> int:
        """Multiply-adds per token of one block's matmuls (their weights, no biases)."""
        raise NotImplementedError

    def attention_width(self) -> int:
        """Heads x head size: the width of q (and of the attention output)."""
        return self.n_embd


class CausalLM(nn.Module):
    """A decoder that maps token ids to final hidden states; logits and the loss are computed here."""

    config: ModelConfig

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      start_pos: int | Sequence[int] | None = None) -> torch.Tensor:
        """Final (normed) hidden states (B, T, C) of tokens `idx` (B, T)."""
        raise NotImplementedError

    def output_weight(self) -> torch.Tensor:
        """The output layer's (V, C) weight: logits = h · Wᵀ."""
        raise NotImplementedError

    def embedding_params(self) -> int:
        """Parameters of the embeddings (left out of `num_params(non_embedding=True)`)."""
        raise NotImplementedError

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (a tied output layer counted once); without the embeddings if asked."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding_params() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return self.config.flops_per_token(seq_len)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """An empty KV cache for up to `max_len` positions (default block_size)."""
        return KVCache(self.config.n_layer, max_len or self.config.block_size)

    def start_of(self, idx: torch.Tensor, cache: KVCache | None,
                 start_pos: int | Sequence[int] | None) -> int | torch.Tensor:
        """Where the tokens `idx` sit: 0 without a cache, else ``cache.length`` or `start_pos` (a (B,)
        tensor when one start per row); refuses positions past the context."""
        T = idx.size(1)
        per_row = isinstance(start_pos, (list, tuple))
        if per_row and cache is None:
            raise ValueError("start positions per row need a cache")
        start = 0 if cache is None else (cache.length if start_pos is None else start_pos)
        last = max(start) if per_row else start
        limit = self.config.block_size if cache is None else min(self.config.block_size, cache.max_len)
        if last + T > limit:
            raise ValueError(f"positions {last}..{last + T - 1} exceed the context of {limit} tokens")
        return torch.tensor(start, device=idx.device) if per_row else start

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                *, cache: KVCache | None = None, start_pos: int | Sequence[int] | None = None,
                last_only: bool = False, per_row: bool = False, teacher: tuple | None = None):
        """Logits, or the summed loss.

        * ``targets`` None: fp32 logits (B, T, V), or (B, 1, V) for the last position if `last_only`
          (what generation needs; a prompt's other logits are never built). With `cache`, the tokens sit
          at positions ``cache.length ..`` (or `start_pos` .., one start per row if a list) and their
          keys/values are stored.
        * ``targets`` (B, T) given: ``(loss_sum, n_targets)``, two fp32 scalars: the cross-entropy summed
          over the positions where `loss_mask` (B, T) is nonzero (every position if None) and how many
          those are. Divide by the token count of the whole effective batch, not per micro-batch.
          With `per_row`, both are (B,): each row's sum and count (`model.row_loss`, for pair losses).
          With `teacher` (ids, counts, kd_weight): ``(loss_sum, n_targets, {"ce": .., "kd": ..})``, the loss
          mixed with distillation from sparse teacher targets (`model.distill_loss`).
        """
        h = self.hidden_states(idx, cache, start_pos)
        weight = self.output_weight()
        if targets is None:
            if last_only:
                h = h[:, -1:, :]
            return F.linear(h, weight).float()
        mask = torch.ones_like(targets, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
        if per_row:
            return row_losses(h, weight, targets, mask, self.config.loss_chunk_tokens)
        if teacher is not None:
            loss_sum, parts = distill_loss(h, weight, targets, mask, teacher, self.config.loss_chunk_tokens,
                                           _matmul_dtype(h))
            return loss_sum, mask.sum(dtype=torch.float32), parts
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
        # a frozen output layer (LoRA runs) needs no V x C weight gradient: often the step's largest tensor
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
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
                    if grad_w is None:
                        pass
                    elif dtype == torch.float32:
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
