"""The architectures the project ships, registered with `model.arch` (imported by it on first use)."""

from __future__ import annotations

from model.arch import Arch, register
from model.gpt import GPT, GPTConfig

register(Arch("gpt2", GPTConfig, GPT))
