"""The stages the project ships, each registered with `train.stage` by one line here.

A stage is a module in this folder (a `train.stage.LMStage` with its settings, overlay and hooks);
adding one is that module plus a `register` line below. This list re-exports the registry, so code
that looks a stage up imports it from here and finds the shipped ones registered.
"""

from __future__ import annotations

import train.distill  # noqa: F401 - declares kd_weight, a setting of pretrain and sft
import train.lora_options  # noqa: F401 - registers the LoRA settings of sft and dpo (a shared group)
from train.stage import STAGES, LMStage, PrepareContext, Prepared, StageError, get, register  # noqa: F401
from train.stages.dpo import DPO
from train.stages.pretrain import PRETRAIN
from train.stages.sft import SFT

register(PRETRAIN)
register(SFT)
register(DPO)
