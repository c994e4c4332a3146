"""The modern recipe's decoder (arch ``qwen3``): Qwen3's architecture at any size, read top to bottom.

Pre-norm blocks with RMSNorm, rotary position embeddings (no position table, so the context is only a
setting), a per-head RMSNorm on queries and keys (Qwen3's QK-norm, which keeps attention logits
bounded without a softcap), a SwiGLU MLP, grouped-query attention (`n_kv_head` key/value heads, each
serving ``n_head / n_kv_head`` query heads: the KV cache holds only those), no biases anywhere, and
input and output embeddings tied unless `tie_embeddings` is off. Parameter names are Hugging Face's
`Qwen3ForCausalLM`'s (``model.layers.0.self_attn.q_proj`` ...), so the export renames nothing, and the
rotation is theirs (``rotate_half``: the two halves of a head, not interleaved pairs), which is also
llama.cpp's NEOX rope for ``qwen3``.

The defaults are chosen so that ``--set arch=qwen3`` on any preset gives the same matmul weights per
layer as the seed's GPT: half as many key/value heads as query heads (attention 3·C² instead of 4·C²)
and a SwiGLU three times as wide (3 matrices of 3·C² = 9·C² instead of the GELU MLP's 8·C²), 12·C²
either way; 3·C is Qwen3-0.6B's own ratio (1024 -> 3072).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from model.attention import KVCache, attend, positions
from model.layers import RMSNorm, SwiGLU, rope_tables, rotate
from model.lm import CausalLM, ModelConfig


@dataclass
class Qwen3Config(ModelConfig):
    arch: str = "qwen3"
    n_kv_head: int = 0  # 0: n_head / 2 when n_head is even (Qwen3's ratio), else n_head
    intermediate_size: int = 0  # 0: 3 x n_embd
    # nanochat's and Llama 2's base for contexts of a few thousand tokens; Qwen3 ships 1e6 for 32k+.
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6  # Qwen3's
    tie_embeddings: bool = True

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("n_layer", "n_head", "n_embd", "n_kv_head", "intermediate_size",
                                               "tie_embeddings")
    BLOCKS: ClassVar[str] = "model.layers"
    # rotary positions: the context is a setting, not a weight, so a fine-tune may train longer blocks
    KNOBS: ClassVar[tuple[str, ...]] = (*ModelConfig.KNOBS, "block_size")
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"n_kv_head": (0, 1024), "intermediate_size": (0, 1 << 20),
                                                        "rope_theta": (10.0, 1e9), "rms_norm_eps": (1e-12, 0.01)}

    def check(self) -> None:
        super().check()
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head size; n_embd / n_head is {self.head_dim}")

    # 0 stays 0 in the config (so that a later --set n_head=... or n_embd=... moves the default along)
    @property
    def kv_heads(self) -> int:
        if self.n_kv_head:
            return self.n_kv_head
        return self.n_head // 2 if self.n_head % 2 == 0 else self.n_head

    @property
    def ffn_width(self) -> int:
        return self.intermediate_size or 3 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def expected_shapes(self) -> dict[str, list[int]]:
        shapes = {"model.embed_tokens.weight": [self.vocab_size, self.n_embd],
                  "model.layers.0.self_attn.k_proj.weight": [self.kv_width, self.n_embd],
                  "model.layers.0.mlp.gate_proj.weight": [self.ffn_width, self.n_embd]}
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = [self.vocab_size, self.n_embd]
        return shapes

    def matmul_weights_per_layer(self) -> int:
        C = self.n_embd
        return 2 * C * C + 2 * C * self.kv_width + 3 * C * self.ffn_width  # q, o; k, v; gate, up, down

    def param_counts(self) -> tuple[int, int]:
        C, L = self.n_embd, self.n_layer
        linear = self.matmul_weights_per_layer()
        norms = L * (2 * C + 2 * self.head_dim) + C  # two RMSNorms and the q/k norms per block, the final one
        heads = (1 if self.tie_embeddings else 2) * self.vocab_size * C
        return heads + L * linear + norms, L * linear

    def layer_activations(self, s, micro: int) -> dict[str, int]:
        """What one block saves for backward: as GPT's (`model.archs.gpt2.GPTConfig.layer_activations`), with
        RMSNorm (input + rstd), the q/k norms' inputs, and SwiGLU's four tensors of the MLP's width."""
        N, C, H, T = micro * s.block_size, self.n_embd, self.n_head, s.block_size
        K, F_, a = self.kv_width, self.ffn_width, s.matmul_bytes
        saved = {"input_layernorm input (the residual stream, fp32)": 4 * N * C + 4 * N,
                 "q/k/v_proj input (input_layernorm output)": a * N * C,
                 "q_norm, k_norm inputs (q_proj, k_proj outputs) + rstd": a * N * (C + K) + 4 * N * (H + self.kv_heads),
                 "q, k (rotated), v for attention": a * N * (C + 2 * K)}
        if s.math_attention:
            scores = (4 + 4 + 4 + 2) if s.amp else 3 * 4
            saved["attention buffers: T x T probabilities, dropout noise, dropped"] = scores * micro * H * T * T
            saved["k, v expanded to every query head"] = 2 * a * N * (C - K)
        else:
            saved["attention buffers: logsumexp"] = 4 * N * H
        saved["attention output, o_proj input"] = a * N * C
        saved["post_attention_layernorm input (fp32)"] = 4 * N * C + 4 * N
        saved["gate/up_proj input"] = a * N * C
        saved["SwiGLU: gate, up, silu(gate), down_proj input"] = 4 * a * N * F_
        if self.dropout > 0:
            saved["dropout masks of the two residual branches"] = 2 * (1 if s.device == "cuda" else a) * N * C
        return saved

    def backward_peak_extra(self, s, micro: int) -> int:
        """Temporaries at the start of the last block's backward: SwiGLU's gradients and the widest
        weight gradient (down_proj's, F x C fp32, F = ffn_width)."""
        N, F_, a = micro * s.block_size, self.ffn_width, s.matmul_bytes
        return 3 * a * N * F_ + 4 * F_ * self.n_embd


class Attention(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.kv_width, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.kv_width, bias=False)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: KVCache | None,
                layer: int, start: int | torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_head, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = rotate(q, *rope), rotate(k, *rope)
        y = attend(q, k, v, cache, layer, start, self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = SwiGLU(config.n_embd, config.ffn_width)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope, cache, layer, start) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.input_layernorm(x), rope, cache, layer, start))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class Qwen3(CausalLM):
    """``model.embed_tokens``, ``model.layers``, ``model.norm`` and, untied only, ``lm_head``."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
            layers=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            norm=RMSNorm(config.n_embd, config.rms_norm_eps),
        ))
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # the rotation tables are derived, not learned: kept out of the state dict (and the weights file)
        cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # as GPT-2: each residual branch's output projection scaled so the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def embedding_params(self) -> int:
        head = 0 if self.lm_head is None else self.lm_head.weight.numel()
        return self.model.embed_tokens.weight.numel() + head

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      start_pos: int | Sequence[int] | None = None) -> torch.Tensor:
        """Final (RMS-normed) hidden states (B, T, C); `start_pos` a list: one start per row of `cache`."""
        start = self.start_of(idx, cache, start_pos)
        pos = positions(idx.size(1), start, idx.device)
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, D), or (B, T, D) with one start per row
        rope = (cos[:, None], sin[:, None]) if cos.dim() == 3 else (cos, sin)
        x = self.drop(self.model.embed_tokens(idx))
        for i, block in enumerate(self.model.layers):
            x = block(x, rope, cache, i, start)
        if cache is not None and not isinstance(start, torch.Tensor):
            cache.length = start + idx.size(1)
        return self.model.norm(x)
