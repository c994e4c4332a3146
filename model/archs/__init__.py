"""The architectures the project ships, each registered with `model.arch` by one line here.

An architecture is a module in this folder (its config, its model, and a ``*_formats`` module with its
export tables); adding one is that module plus a `register` line below. This list re-exports the
registry's functions, so importing them from here guarantees the shipped architectures are known.
"""

from __future__ import annotations

from model.arch import (  # noqa: F401 - the registry's API, re-exported
    ARCHS,
    DEFAULT_ARCH,
    Arch,
    ArchError,
    GGUFMapping,
    HFMapping,
    arch_of,
    build,
    config_for,
    config_from_dict,
    get,
    mapping,
    register,
)
from model.archs import gpt2_formats, qwen3_formats
from model.archs.gpt2 import GPT, GPTConfig
from model.archs.qwen3 import Qwen3, Qwen3Config

register(Arch("gpt2", GPTConfig, GPT, gpt2_formats.HF, gpt2_formats.GGUF))
register(Arch("qwen3", Qwen3Config, Qwen3, qwen3_formats.HF, qwen3_formats.GGUF))
