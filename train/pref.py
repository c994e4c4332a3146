"""The preference stage, ``train dpo``: a chat model tuned on pairs of replies (DPO, SimPO or ORPO).

A `train.stage.LMStage` with its own sampler (pairs: `train.pref_data`), loss (`train.pref_loss`, chosen
with ``--set loss=dpo|simpo|orpo``), evaluation (loss and reward accuracy on fixed validation pairs) and
one-time preparation (the reference log-probs: `train.pref_reference`). The Trainer runs it as it runs
SFT: the step's loss is the mean over the step's pairs on all ranks (`count` is pairs), so DDP and
gradient accumulation stay exact, and the checkpoint it writes is a chat model like SFT's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prep.tokenfile import Split
from train import pref_reference
from train.lora import reference_model
from train.pref_data import EvalPairs, Pairs, PairSampler, PrefDataError, eval_pairs
from train.pref_loss import TRAIN_METRICS, VAL_METRICS, Objective
from train.stage import LMStage, register


@dataclass(frozen=True)
class PrefStage(LMStage):
    objective: Objective = Objective()  # bound to the run's config by `for_config`

    def for_config(self, cfg) -> PrefStage:
        return dataclasses.replace(self, objective=Objective.from_config(cfg))

    def sampler(self, splits: Sequence[Split], weights: Sequence[float], block_size: int, micro_batch_size: int,
                seed: int) -> PairSampler:
        if len(splits) != 1:
            raise PrefDataError(f"train {self.name} takes one token folder, not a mixture of {len(splits)}")
        return PairSampler(splits[0], block_size, micro_batch_size, seed)

    def count(self, micro: tuple[np.ndarray, ...]) -> int:
        return len(micro[3])  # pairs: the losses are per pair

    def micro_loss(self, forward, micro: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, mask, reference = micro
        nll, counts = forward(x, y, mask, per_row=True)
        losses, sums = self.objective.pair_losses(nll, counts, reference)
        return losses.sum(), {name: sums[name] for name in TRAIN_METRICS}

    def eval_starts(self, split: Split, block_size: int, n_blocks: int) -> EvalPairs:
        return eval_pairs(split, n_blocks)

    @torch.no_grad()
    def eval_sums(self, model, split: Split, starts: EvalPairs, block_size: int, batch_size: int,
                  device: torch.device, autocast=contextlib.nullcontext, rank: int = 0,
                  world_size: int = 1) -> list[float]:
        sums = torch.zeros(2 + len(VAL_METRICS), dtype=torch.float64, device=device)
        pairs, positions = Pairs.of(split), np.arange(len(starts))[rank::world_size]
        was_training = model.training
        model.eval()
        for i in range(0, len(positions), max(1, batch_size // 2)):
            rows = positions[i : i + max(1, batch_size // 2)]
            reference = torch.from_numpy(starts.reference[rows]).to(device)
            with autocast():
                nll, counts = pref_reference.pair_rows(model, split, pairs, starts.index[rows], block_size, device)
            losses, metrics = self.objective.pair_losses(nll, counts, reference)
            sums += torch.stack([losses.sum(), torch.tensor(float(len(rows)), device=device),
                                 *(metrics[name] for name in VAL_METRICS)]).double()
        model.train(was_training)
        return sums.tolist()

    def prepare(self, trainer) -> None:
        """The reference log-probs: computed by the initial model on a fresh run, read back on a resumed one."""
        need_train = self.objective.needs_reference
        parts = pref_reference.load(trainer) if trainer.ckpt is not None else None
        if parts is None or (need_train and "train" not in parts):
            if trainer.ckpt is not None:
                raise pref_reference.ReferenceError(
                    f"{trainer.run_folder.reference}: holds no training pairs' log-probs (the run began with "
                    f"loss={trainer.saved_run['config'].get('loss')}); DPO needs them: start a new run")
            with reference_model(trainer):  # the base model: a LoRA run's adapters off
                parts = pref_reference.compute(trainer, need_train)
        trainer.sampler.reference = parts.get("train")
        if isinstance(trainer.val_starts[0], EvalPairs):
            trainer.val_starts[0].reference = parts["val"]

    def check_trainable(self, path, split: Split) -> str | None:
        problem = super().check_trainable(path, split)
        if problem is None and split.mask is None:
            return f"{path}: a preference folder without loss masks; rerun `{self.prep_command}`"
        return problem

    def eval_note(self, record: dict) -> str | None:
        shift = record.get("val_chosen_shift")
        if shift is not None and shift < 0:
            return (f"the chosen replies' log-prob fell by {-shift:.3f} nats per pair below the initial model's (a "
                    "known preference-tuning failure: both replies lose probability); consider a lower lr, a larger "
                    "beta, or loss=orpo, which keeps an SFT term")
        return None


DPO = register(PrefStage("dpo", "pref", "prep pref", needs_init=True, chat=True, preset_suffix="-dpo",
                         turn_starts=False, metrics=TRAIN_METRICS, val_metrics=VAL_METRICS, bits_per_byte=False))
