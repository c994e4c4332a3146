"""LoRA runs: ``--set lora_rank=R`` on ``train sft`` and ``train dpo`` (docs/lora.md).

The trainer's hooks, kept here so the trainer only asks: `start_weights` puts the starting weights into
the freshly built model (a full run's as before; an adapter run's base, then peft's adapters on it,
`model.lora`), `AdapterRun.record` is what the checkpoint keeps of the adapters (`model.adapters`),
`reference_model` is DPO's reference (the base: adapters off).

What the run does with the adapters:

* fresh run: the --init model (a full checkpoint, or an adapter one merged into its base, so a chain
  pretrain -> LoRA-SFT -> LoRA-DPO trains DPO's adapters on the merged SFT model) is the frozen base;
  its identity (path as given, step, weights digest, tokenizer) goes into every checkpoint;
* resumed run: the base is loaded again from that path, refused in one line if it changed, and the
  saved adapters go on it; the options must be the checkpoint's (another rank is another run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from model.adapters import adapter_record, checked_base, load_model, read_adapters
from model.identity import checkpoint_identity
from model.io import load_weights_into, read_model_info
from model.lm import CausalLM
from model.lora import LoraError, LoraOptions, attach, load_adapter_state


class LoraRunError(UserError, ValueError):
    """A LoRA setting that does not fit the stage or the checkpoint being resumed."""


def options_of(cfg) -> LoraOptions | None:
    """The run's LoRA options (its stage's `train.lora_options.LoraSettings`), or None for full fine-tuning."""
    s = cfg.stage
    if getattr(s, "lora_rank", 0) == 0:
        return None
    return LoraOptions(s.lora_rank, s.lora_alpha, s.lora_dropout, LoraOptions.parse_targets(s.lora_targets))


@dataclass
class AdapterRun:
    peft: object  # the peft.PeftModel around the trainer's model
    options: LoraOptions
    base: dict  # the base's identity (model.identity.checkpoint_identity)

    def describe(self, model: CausalLM) -> str:
        """The run's start line about its adapters: rank, layers, trained share, base."""
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        layers = len(self.peft.peft_config["default"].target_modules)
        return (f"LoRA rank {self.options.rank} (alpha {self.options.alpha:g}) on {layers} layers: {trained:,} trained "
                f"parameters ({trained / model.num_params():.2%}); base {self.base['path']} (step "
                f"{self.base.get('step')}) frozen")

    def record(self) -> dict:
        """model.json's ``adapter`` entry: the options and the base's identity."""
        return {**self.options.to_dict(), "base": self.base}


def _load_base(model: CausalLM, path: str | os.PathLike) -> None:
    """A full checkpoint's weights, or an adapter checkpoint's merged into its base, into `model`."""
    if adapter_record(read_model_info(path)) is None:
        load_weights_into(model, path)
    else:
        merged, _ = load_model(path)
        model.load_state_dict(merged.state_dict())


def start_weights(model: CausalLM, cfg, ckpt: Path | None, init: Path | None,
                  init_as_given: str | os.PathLike | None) -> AdapterRun | None:
    """Load the run's starting weights into `model` (built, on the CPU); the adapters when it trains them."""
    options = options_of(cfg)
    if ckpt is not None:
        record = adapter_record(read_model_info(ckpt))
        if (record is None) != (options is None):
            have = "full fine-tuning" if record is None else f"adapters of rank {record.get('rank')}"
            raise LoraRunError(f"{ckpt}: holds {have}; resume it with the same lora_rank (or use another --out)")
        if record is None:
            load_weights_into(model, ckpt)
            return None
        base_path, saved = checked_base(read_model_info(ckpt), ckpt)
        if saved != options:
            raise LoraRunError(f"{ckpt}: adapters with {saved}, this run asks for {options}; resume with the same "
                               "lora_* settings (or use another --out)")
        _load_base(model, base_path)
        run = AdapterRun(_attach(model, options), options, record["base"])
        try:
            load_adapter_state(model, read_adapters(ckpt), str(ckpt))
        except LoraError as e:
            raise LoraRunError(str(e)) from None
        return run
    if init is None:
        return None
    _load_base(model, init)
    if options is None:
        return None
    return AdapterRun(_attach(model, options), options, checkpoint_identity(init_as_given))


def _attach(model: CausalLM, options: LoraOptions):
    try:
        return attach(model, options)
    except LoraError as e:
        raise LoraRunError(str(e)) from None
