"""Tiny models and checkpoints for generation, chat and export tests (no training: `save_model` directly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from model.archs import build, config_from_dict
from model.archs.gpt2 import GPT
from model.io import save_model
from model.lm import CausalLM
from prep.tokenizer import load_tokenizer
from tests.conftest import ROOT


def tiny_model(block_size: int = 32, vocab_size: int = 384, std: float = 0.3, seed: int = 0, **kw) -> CausalLM:
    """A 2-layer, 32-wide GPT (or another arch: ``arch="qwen3"``). Weights drawn wider than GPT-2's init
    (std 0.02) so that greedy output varies from token to token instead of repeating one token, which
    would make comparisons weak."""
    torch.manual_seed(seed)
    config = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": block_size, "vocab_size": vocab_size, **kw}
    model = build(config_from_dict(config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model


def tiny_qwen3(**kw) -> CausalLM:
    """`tiny_model` in arch qwen3: 4 query heads sharing 2 key/value heads."""
    return tiny_model(**{"arch": "qwen3", "n_head": 4, **kw})


def favour(model: GPT, token_ids, strength: float = 20.0) -> GPT:
    """Make `token_ids` the likeliest next tokens whatever the input: the final LayerNorm outputs a
    constant vector v (weight 0, bias v) and those ids' (tied) embedding rows become strength * v."""
    with torch.no_grad():
        v = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(1))
        v /= v.norm()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        for i in token_ids:
            model.transformer.wte.weight[i] = strength * v
    return model


def save_tiny(path: Path, data_kind: str = "pretrain", tokenizer: str = "bytes", model: GPT | None = None,
              **kw) -> Path:
    """A run folder `path` with ``checkpoint/model.safetensors`` + ``model.json``."""
    tok = load_tokenizer(tokenizer)
    model = model or tiny_model(**kw)
    save_model(path / "checkpoint", model, tok.identity(), data_kind, step=3)
    return path


def run_make(target: str, env: dict[str, str] | None = None, **variables: str) -> subprocess.CompletedProcess:
    """``make TARGET VAR=value ...`` at the repository root, with this interpreter and .venv left as it is
    (``-o``: never rebuilt from a test), offline."""
    python = sys.executable
    args = ["make", "--no-print-directory", "-o", ".venv/.installed", f"PY={python}", target]
    args += [f"{k}={v}" for k, v in variables.items()]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)
