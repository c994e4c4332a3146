"""The architectures the project ships, registered with `model.arch` (imported by it on first use)."""

from __future__ import annotations

from model import gpt2_formats, qwen3_formats
from model.arch import Arch, register
from model.gpt import GPT, GPTConfig
from model.qwen3 import Qwen3, Qwen3Config

register(Arch("gpt2", GPTConfig, GPT, gpt2_formats.HF, gpt2_formats.GGUF))
register(Arch("qwen3", Qwen3Config, Qwen3, qwen3_formats.HF, qwen3_formats.GGUF))
