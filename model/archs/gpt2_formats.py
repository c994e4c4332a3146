"""What the exports need of arch ``gpt2`` (`model.archs.gpt2`), as tables: its Hugging Face and GGUF forms.

Registered with the architecture (`model.archs`); the exporters (`model.export.hf`,
`model.export.gguf`) are generic and ask these. No export library is imported here.

* Hugging Face `GPT2LMHeadModel`: GPT-2 keeps its projections in ``Conv1D`` modules whose weight is
  (in, out); ours are `nn.Linear` (out, in), so ``c_attn``, ``c_proj`` and ``c_fc`` weights are
  transposed, nothing renamed. ``activation_function="gelu_pytorch_tanh"`` is the very kernel our
  MLP calls, so logits match to float rounding. GPT-2 always has biases: a model trained without
  them gets zero ones.
* llama.cpp ``gpt2``: our `nn.Linear` (out, in) is ggml's layout, nothing transposed; ``token_embd``
  (only the tokenizer's rows), ``position_embd``, per block ``attn_norm``, ``attn_qkv``,
  ``attn_output``, ``ffn_norm``, ``ffn_up``, ``ffn_down``, then ``output_norm``, each weight and
  bias (zero biases where the model has none). No ``output`` tensor: llama.cpp then uses
  ``token_embd``, which is how our output layer is tied.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from model.arch import GGUFMapping, HFMapping
from model.archs.gpt2 import GPTConfig

CONV1D_SUFFIXES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# our module names -> llama.cpp's, inside a block
BLOCK_TENSORS = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
                 "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def hf_state_dict(state: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    """Our fp32 weights under GPT2LMHeadModel's names and layouts (Conv1D weights transposed)."""
    out = {}
    for name, t in state.items():
        out[name] = t.t() if name.endswith(CONV1D_SUFFIXES) else t
        if not c.bias and name.endswith(".weight") and (".h." in name or name.startswith("transformer.ln_f.")):
            out[name.removesuffix(".weight") + ".bias"] = torch.zeros(t.shape[0])  # (out, in): out wide
    return out


def hf_config(c: GPTConfig) -> dict:
    return {
        "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_inner": 4 * c.n_embd, "activation_function": "gelu_pytorch_tanh",
        "layer_norm_epsilon": c.layer_norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
    }


def gguf_tensors(state: dict[str, torch.Tensor], c: GPTConfig, n_vocab: int) -> Iterator[tuple[str, torch.Tensor]]:
    """``(llama.cpp name, fp32 tensor)`` for every tensor, in the order llama.cpp's converter writes them."""

    def weight_and_bias(ours: str, theirs: str) -> Iterator[tuple[str, torch.Tensor]]:
        w = state[f"{ours}.weight"]
        yield f"{theirs}.weight", w
        yield f"{theirs}.bias", state.get(f"{ours}.bias", torch.zeros(w.shape[0]))

    yield "token_embd.weight", state["transformer.wte.weight"][:n_vocab]
    yield "position_embd.weight", state["transformer.wpe.weight"]
    for i in range(c.n_layer):
        for ours, theirs in BLOCK_TENSORS.items():
            yield from weight_and_bias(f"transformer.h.{i}.{ours}", f"blk.{i}.{theirs}")
    yield from weight_and_bias("transformer.ln_f", "output_norm")


def gguf_metadata(writer, c: GPTConfig) -> None:
    """The ``gpt2.*`` keys llama.cpp reads (the writer prefixes them with the architecture)."""
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(4 * c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_eps)


HF = HFMapping("GPT2LMHeadModel", "gpt2", hf_config, hf_state_dict)
GGUF = GGUFMapping("gpt2", gguf_metadata, gguf_tensors, "GPT-2")
