"""The architectures a model can have, by name: the one place that knows which classes make a model.

A checkpoint's model.json and a run's train_config.json record the architecture in the config's
``arch`` field (``gpt2``, the seed's GPT, when absent: every checkpoint written before there was a
choice). `register` adds one: its config class (a `model.lm.ModelConfig`, which answers for its
shapes, parameter counts and per-layer memory) and its model class (a `model.lm.CausalLM`), plus
what the exports need, kept as plain data so that this module imports none of them:

* ``hf``: the Hugging Face mapping (`HFMapping`): the ``architectures`` / ``model_type`` names, the
  config.json of a config, and our state dict as theirs;
* ``gguf``: the GGUF mapping (`GGUFMapping`): llama.cpp's architecture name and its metadata.

Nothing outside this module constructs a model class by name: `build(config)` does, and
`config_from_dict` reads a recorded config whatever its architecture.

This module imports no architecture: the list of shipped ones, `model.archs`, imports each and
registers it (torchtitan's shape), and re-exports these functions, so code that builds or reads
models imports `model.archs` and finds them registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch

from common.errors import UserError
from model.lm import CausalLM, ModelConfig

DEFAULT_ARCH = "gpt2"


class ArchError(UserError, ValueError):
    """An architecture name that is not registered, or a field it does not have."""


@dataclass(frozen=True)
class HFMapping:
    """How a model of this architecture becomes a Hugging Face folder (`model.export.hf`)."""

    architecture: str  # config.json "architectures": e.g. GPT2LMHeadModel
    model_type: str  # config.json "model_type": e.g. gpt2
    config: Callable[[ModelConfig], dict]  # the config.json fields that describe the model
    state_dict: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]  # ours -> theirs


@dataclass(frozen=True)
class GGUFMapping:
    """How a model of this architecture becomes a GGUF file (`model.export.gguf`)."""

    architecture: str  # general.architecture, llama.cpp's name: gpt2, qwen3
    metadata: Callable[[object, ModelConfig], None]  # writes the architecture's keys into a gguf.GGUFWriter
    # (our fp32 state dict, config, tokenizer length) -> (llama.cpp name, tensor), in the file's order
    tensors: Callable[[dict[str, torch.Tensor], ModelConfig, int], Iterator[tuple[str, torch.Tensor]]]
    title: str  # the architecture in prose: "GPT-2", "Qwen3"


@dataclass(frozen=True)
class Arch:
    name: str
    config: type[ModelConfig]
    model: type[CausalLM]
    hf: HFMapping | None = None
    gguf: GGUFMapping | None = None


ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    """Add an architecture (its config's ``arch`` default must be its name)."""
    if arch.config.arch_name() != arch.name:
        raise ValueError(f"{arch.config.__name__}.arch is {arch.config.arch_name()!r}, registered as {arch.name!r}")
    ARCHS[arch.name] = arch
    return arch


def get(name: str) -> Arch:
    if name not in ARCHS:
        raise ArchError(f"unknown arch {name!r}; choose one of {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def arch_of(config: ModelConfig) -> Arch:
    return get(config.arch)


def mapping(config: ModelConfig, kind: str) -> HFMapping | GGUFMapping:
    """The architecture's export table of `kind` (``hf`` or ``gguf``); an `ArchError` if it has none."""
    found = getattr(arch_of(config), kind)
    if found is None:
        raise ArchError(f"arch {config.arch} has no {'Hugging Face' if kind == 'hf' else 'GGUF'} export")
    return found


def config_from_dict(d: dict) -> ModelConfig:
    """A recorded model config (model.json, train_config.json); without ``arch`` it is a gpt2 config.
    Raises ValueError (an `ArchError` for an unknown architecture) for anything it cannot read."""
    if not isinstance(d, dict):
        raise ValueError("the model config is not an object")
    name = d.get("arch", DEFAULT_ARCH)
    if not isinstance(name, str):
        raise ArchError(f"arch {name!r} is not a name")
    return get(name).config.from_dict(d)


def config_for(name: str, base: ModelConfig, values: dict) -> ModelConfig:
    """A config of architecture `name` with `values`, keeping `base`'s values of the fields both have
    (a preset's depth and width carry over to another architecture); a field `name` does not have is
    an `ArchError` naming it."""
    cls = get(name).config
    own = cls.field_names()
    foreign = sorted(set(values) - own)
    if foreign:
        raise ArchError(f"arch {name} has no field {', '.join(foreign)}; its fields are "
                        f"{', '.join(sorted(own - {'arch', 'vocab_size'}))}")
    kept = {f.name: getattr(base, f.name) for f in fields(base) if f.name in own and f.name != "arch"}
    if base.arch != name:  # a field whose default differs between architectures takes the new one's default
        kept = {k: v for k, v in kept.items() if k in _COMMON}
    return cls(**{**kept, **values})


_COMMON = ModelConfig.field_names() - {"arch"}


def build(config: ModelConfig) -> CausalLM:
    """The model `config` describes, freshly initialised (under the caller's torch seed and device)."""
    return arch_of(config).model(config)
