"""Low-rank adapters (LoRA) on this project's models, through `peft` (the field's library).

`attach` wraps the chosen `nn.Linear` layers of a `model.lm.CausalLM` in peft's LoRA layers
(``get_peft_model`` with a ``LoraConfig``): each keeps its weight W frozen and adds
``(alpha / rank) · B A x`` with A (rank x in) and B (out x rank) trainable, B starting at zero, so the
model starts exactly as its base. The model object stays ours (peft wraps its layers in place), so
training, evaluation and sampling run it as before; the returned `peft.PeftModel` gives peft's
``disable_adapter()`` (the base model, for DPO's reference) and ``merge_and_unload()`` (W + the
low-rank product, a plain model again).

Defaults, and where they come from:

* targets: every `nn.Linear` of the blocks (attention and MLP; not the embedding or the output layer),
  as "LoRA Without Regret" (Schulman et al., Thinking Machines, 2025) recommends: attention-only
  adapters fall short of full fine-tuning, all-layer ones match it. ``lora_targets`` narrows them by the
  layers' own names (``c_attn,c_proj`` for gpt2; ``q_proj,v_proj`` for qwen3).
* alpha 32 at every rank (the same article; peft scales by alpha / rank, which keeps the best learning
  rate about the same across ranks), dropout 0 (peft's default and the article's).
"""

from __future__ import annotations

import contextlib
import re
import weakref
from dataclasses import asdict, dataclass

import torch
from torch import nn

from common.errors import UserError
from model.archs import build
from model.lm import CausalLM, ModelConfig

DEFAULT_ALPHA = 32.0
BLOCK_LAYER = re.compile(r"\.(?:h|layers)\.\d+\.")  # a block's modules: transformer.h.3.*, model.layers.3.*
ADAPTER_KEY = ".lora_"  # in every adapter tensor's name: ...c_attn.lora_A.default.weight


class LoraError(UserError, ValueError):
    """LoRA options that do not fit the model, or adapter tensors that do not fit it."""


@dataclass(frozen=True)
class LoraOptions:
    rank: int
    alpha: float = DEFAULT_ALPHA
    dropout: float = 0.0
    targets: tuple[str, ...] = ()  # the layers' short names; empty: every Linear of the blocks

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict) -> LoraOptions:
        try:
            return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d.get("targets") or ()))
        except (KeyError, TypeError, ValueError) as e:
            raise LoraError(f"not a LoRA record ({e})") from None

    @classmethod
    def parse_targets(cls, text: str) -> tuple[str, ...]:
        """``"c_attn, c_proj"`` -> ("c_attn", "c_proj"); ``""`` or ``"all"`` -> () (every block Linear)."""
        names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        return () if names in ((), ("all",)) else names


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The `nn.Linear` layers inside the blocks, by full name (never the output layer)."""
    output = model.output_weight() if isinstance(model, CausalLM) else None
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and BLOCK_LAYER.search(name) and m.weight is not output}


def target_modules(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The full names of the layers `targets` picks; an unknown short name is an error listing the known ones."""
    layers = block_linears(model)
    known = sorted({name.rsplit(".", 1)[-1] for name in layers})
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise LoraError(f"lora_targets: no layer named {', '.join(unknown)} in this model; its block layers are "
                        f"{', '.join(known)} (or all)")
    return [name for name in layers if not targets or name.rsplit(".", 1)[-1] in targets]


def attach(model: CausalLM, options: LoraOptions):
    """Wrap `model`'s target layers in LoRA layers (in place) and freeze everything else; the `PeftModel`.

    Only the adapters require gradients afterwards, so the optimizer (`train.optim`) holds state for
    them alone."""
    from peft import LoraConfig, get_peft_model  # peft imports transformers: only runs that use adapters pay

    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=target_modules(model, options.targets), bias="none")
    peft_model = get_peft_model(model, config)
    _ATTACHED[model] = peft_model
    return peft_model


_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # our model -> the PeftModel around it


def adapters_off(model: nn.Module):
    """A context in which `model` is its base: peft's ``disable_adapter()`` (a model without adapters: as is)."""
    peft_model = _ATTACHED.get(model)
    return peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext()


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (fp32, on the CPU) under the model's own state-dict names."""
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
            if ADAPTER_KEY in k}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy saved adapters into an attached model, refusing missing, extra, misshapen or non-finite tensors."""
    own = adapter_state(model)
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise LoraError(f"{where}: adapters do not match the model (missing {missing[:2]}, unexpected {extra[:2]})")
    for name, t in state.items():
        if t.shape != own[name].shape:
            raise LoraError(f"{where}: {name} has shape {tuple(t.shape)}, the model expects {tuple(own[name].shape)}")
        if not torch.isfinite(t).all():
            raise LoraError(f"{where}: {name} holds NaN or infinite values (a diverged run?)")
    model.load_state_dict(state, strict=False)


def target_shapes(config: ModelConfig, options: LoraOptions) -> list[tuple[int, int]]:
    """(in, out) of every layer `options` adapts in a model of `config` (built on the meta device: no memory,
    exact for any architecture)."""
    with torch.device("meta"):
        model = build(config)
    layers = block_linears(model)
    return [(layers[n].in_features, layers[n].out_features) for n in target_modules(model, options.targets)]


def adapter_params(config: ModelConfig, options: LoraOptions) -> int:
    """How many parameters the adapters of `options` add to a model of `config`: rank x (in + out) per layer."""
    return sum(options.rank * (i + o) for i, o in target_shapes(config, options))
