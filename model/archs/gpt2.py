"""The seed's GPT (arch ``gpt2``, the default): a GPT-2-style decoder, readable top to bottom.

Pre-norm blocks (LayerNorm before attention and before the MLP), learned positions, a GELU MLP four
times as wide, input and output embeddings tied, `F.scaled_dot_product_attention` (flash / memory-
efficient kernels where the device has them). The GELU is the tanh approximation, GPT-2's own, so an
export to Hugging Face `GPT2LMHeadModel` uses ``activation_function="gelu_pytorch_tanh"`` (the same
PyTorch kernel, bit for bit) or ``"gelu_new"`` (the same formula).

The logits, the chunked loss and the KV cache are every architecture's (`model.lm`, `model.attention`);
this file is the body, its config, and the config's answers about shapes and memory (`train.plan`'s
model of a step counts the tensors of exactly these modules). No training or sampling code lives here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from model.attention import KVCache, attend, positions
from model.lm import CausalLM, ModelConfig


@dataclass
class GPTConfig(ModelConfig):
    arch: str = "gpt2"
    bias: bool = True
    layer_norm_eps: float = 1e-5

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("n_layer", "n_head", "n_embd", "block_size", "bias")
    BLOCKS: ClassVar[str] = "transformer.h"
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"layer_norm_eps": (1e-12, 0.01)}

    def expected_shapes(self) -> dict[str, list[int]]:
        return {"transformer.wte.weight": [self.vocab_size, self.n_embd],
                "transformer.wpe.weight": [self.block_size, self.n_embd],
                "transformer.h.0.attn.c_attn.weight": [3 * self.n_embd, self.n_embd]}

    def matmul_weights_per_layer(self) -> int:
        return 12 * self.n_embd * self.n_embd  # attention 4·C², MLP 8·C²

    def param_counts(self) -> tuple[int, int]:
        C, L = self.n_embd, self.n_layer
        linear = 12 * C * C + (9 * C if self.bias else 0)  # c_attn 3C² (+3C), c_proj C² (+C), MLP 8C² (+5C)
        norms = (2 * C if self.bias else C) * (2 * L + 1)  # ln_1, ln_2 per block, ln_f
        return (self.vocab_size + self.block_size) * C + L * linear + norms, L * linear

    def layer_activations(self, s, micro: int) -> dict[str, int]:
        """What one block saves for backward (PyTorch's derivatives.yaml: a Linear saves its input,
        LayerNorm its input + mean + rstd, GELU its input, SDPA its q, k, v, output and logsumexp; views
        save nothing); `train.plan`'s docstring walks through the sizes."""
        N, C, H, T = micro * s.block_size, self.n_embd, self.n_head, s.block_size
        a = s.matmul_bytes
        stats = 2 * N * 4  # LayerNorm's mean and rstd, fp32
        mask = 1 if s.device == "cuda" else a  # a dropout mask: bool from native_dropout, else a noise tensor
        saved = {"ln_1 input (the residual stream, fp32)": 4 * N * C + stats, "c_attn input (ln_1 output)": a * N * C}
        if s.math_attention:
            saved["q, k, v copies for the attention matmuls"] = 3 * a * N * C
            # softmax runs in fp32 under autocast, and the dropped probabilities get a bf16 copy for the matmul
            scores = (4 + 4 + 4 + 2) if s.amp else 3 * 4
            saved["attention buffers: T x T probabilities, dropout noise, dropped"] = scores * micro * H * T * T
            saved["c_proj input (attention output made contiguous)"] = a * N * C
        else:
            saved["qkv (c_attn output; q, k, v are views of it)"] = 3 * a * N * C
            saved["attention output (c_proj input)"] = a * N * C
            saved["attention buffers: logsumexp"] = 4 * N * H
        saved["ln_2 input (fp32)"] = 4 * N * C + stats
        saved["c_fc input (ln_2 output)"] = a * N * C
        saved["GELU input (c_fc output)"] = 4 * a * N * C
        saved["c_proj input (GELU output)"] = 4 * a * N * C
        if self.dropout > 0:
            saved["dropout masks of the two residual branches"] = 2 * mask * N * C
        return saved

    def backward_peak_extra(self, s, micro: int) -> int:
        """The GELU's gradients (4·aNC) and c_fc's fp32 weight gradient (4C x C)."""
        return 4 * s.matmul_bytes * micro * s.block_size * self.n_embd + 4 * 4 * self.n_embd * self.n_embd


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
        y = attend(q, k, v, cache, layer, start, self.dropout if self.training else 0.0)
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


class GPT(CausalLM):
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

    def output_weight(self) -> torch.Tensor:
        return self.transformer.wte.weight  # tied

    def embedding_params(self) -> int:
        return self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      start_pos: int | Sequence[int] | None = None) -> torch.Tensor:
        """Final (layer-normed) hidden states (B, T, C) of tokens `idx` (B, T).

        `start_pos` a list: one start per row of `cache` (rows of different lengths, see `KVCache`).
        """
        start = self.start_of(idx, cache, start_pos)
        pos = positions(idx.size(1), start, idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, start)
        if cache is not None and not isinstance(start, torch.Tensor):
            cache.length = start + idx.size(1)
        return self.transformer.ln_f(x)
