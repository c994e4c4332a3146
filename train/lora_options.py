"""The LoRA settings of ``train sft`` and ``train dpo`` (``--set lora_rank=8``; `train.lora`, docs/lora.md).

A shared group (`train.options.shared`): both stages' options have these fields. Rank 0 is full
fine-tuning. The defaults are "LoRA Without Regret" (Schulman et al., Thinking Machines, 2025): every
linear layer of the blocks, alpha 32 at any rank, no dropout (also peft's default), and a learning
rate about ten times full fine-tuning's: each stage overlay sets ``lora_lr``, the run's ``lr`` when
adapters train and ``lr`` was not set (`with_lora_lr`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from train.options import OptionsError, StageOptions, shared

LORA_FIELDS = ("lora_alpha", "lora_dropout", "lora_targets", "lora_lr")


@shared("sft", "dpo")
@dataclass
class LoraSettings(StageOptions):
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: str = "all"  # or the layers' names: c_attn,c_proj (gpt2), q_proj,v_proj (qwen3), ...
    lora_lr: float = 3e-4  # the stage overlay's LoRA rate

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "lora_rank": (0, 1 << 17), "lora_alpha": (1e-6, 1e6), "lora_dropout": (0.0, 0.999), "lora_lr": (1e-12, 10.0)}

    def check_options(self, set_fields: tuple[str, ...]) -> None:
        stray = [k for k in LORA_FIELDS if k in set_fields]
        if stray and self.lora_rank == 0:
            raise OptionsError(f"{', '.join(stray)} set but lora_rank is 0 (full fine-tuning); add --set lora_rank=8")


def with_lora_lr(cfg):
    """`cfg` with ``lr = lora_lr`` when adapters train and the user did not set lr (else `cfg` itself); adapters
    train with AdamW only (Muon is for whole hidden matrices)."""
    if getattr(cfg.stage, "lora_rank", 0) == 0:
        return cfg
    if cfg.optimizer != "adamw":
        raise OptionsError("LoRA adapters train with optimizer=adamw (Muon is for whole hidden matrices)")
    return cfg if "lr" in cfg.set_fields else dataclasses.replace(cfg, lr=cfg.stage.lora_lr)
