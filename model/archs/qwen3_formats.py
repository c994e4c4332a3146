"""What the exports need of arch ``qwen3`` (`model.archs.qwen3`), as tables: its Hugging Face and GGUF forms.

Registered with the architecture (`model.archs`); the exporters are generic and ask these.

* Hugging Face `Qwen3ForCausalLM`: our parameter names are theirs, so the state dict goes as it is
  (the rotary tables are derived, not stored); the config spells out ``head_dim`` (Qwen3's default
  is 128, not n_embd / n_head) and the rope base.
* llama.cpp ``qwen3``: ``token_embd`` (the tokenizer's rows), per block ``attn_norm``, ``attn_q``,
  ``attn_k``, ``attn_v``, ``attn_q_norm``, ``attn_k_norm``, ``attn_output``, ``ffn_norm``,
  ``ffn_gate``, ``ffn_up``, ``ffn_down``, then ``output_norm`` and, untied only, ``output``.
  llama.cpp runs qwen3 with NEOX rope (the halves of a head rotated together), which is ours and
  Hugging Face's, so q and k are not permuted as they are for llama.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from model.arch import GGUFMapping, HFMapping
from model.archs.qwen3 import Qwen3Config

# our module names -> llama.cpp's, inside a block
BLOCK_TENSORS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                 "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def hf_state_dict(state: dict[str, torch.Tensor], c: Qwen3Config) -> dict[str, torch.Tensor]:
    return dict(state)


def hf_config(c: Qwen3Config) -> dict:
    return {
        "hidden_size": c.n_embd, "intermediate_size": c.ffn_width, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
        "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},  # transformers 5's spelling
        "tie_word_embeddings": c.tie_embeddings, "attention_bias": False, "attention_dropout": 0.0,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": c.n_layer,
        "initializer_range": 0.02,
    }


def gguf_tensors(state: dict[str, torch.Tensor], c: Qwen3Config, n_vocab: int
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """``(llama.cpp name, fp32 tensor)`` for every tensor, in the order llama.cpp's converter writes them."""
    yield "token_embd.weight", state["model.embed_tokens.weight"][:n_vocab]
    for i in range(c.n_layer):
        for ours, theirs in BLOCK_TENSORS.items():
            yield f"blk.{i}.{theirs}.weight", state[f"model.layers.{i}.{ours}.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    if not c.tie_embeddings:
        yield "output.weight", state["lm_head.weight"][:n_vocab]


def gguf_metadata(writer, c: Qwen3Config) -> None:
    """The ``qwen3.*`` keys llama.cpp reads (the writer prefixes them with the architecture)."""
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.ffn_width)
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)


HF = HFMapping("Qwen3ForCausalLM", "qwen3", hf_config, hf_state_dict)
GGUF = GGUFMapping("qwen3", gguf_metadata, gguf_tensors, "Qwen3")
