"""The preference stage, ``train dpo``: a chat model tuned on pairs of replies (DPO, SimPO or ORPO).

A `train.stage.LMStage` with its own settings (`PrefOptions`: the loss and its weights, ``cfg.stage``),
sampler (pairs: `train.pref_data`), loss (`train.pref_loss`, chosen with ``--set loss=dpo|simpo|orpo``), evaluation (loss and reward accuracy on fixed validation pairs) and
one-time preparation (the reference log-probs: `train.pref_reference`). The Trainer runs it as it runs
SFT: the step's loss is the mean over the step's pairs on all ranks (`count` is pairs), so DDP and
gradient accumulation stay exact, and the checkpoint it writes is a chat model like SFT's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from model.lora import adapters_off
from prep.tokenfile import Split
from train import pref_reference
from train.options import OptionsError, StageOptions
from train.pref_data import EvalPairs, Pairs, PairSampler, PrefDataError, eval_pairs
from train.pref_loss import TRAIN_METRICS, VAL_METRICS, Objective
from train.stage import LMStage, PrepareContext, Prepared

LOSSES = {"dpo": ("dpo_beta",), "simpo": ("simpo_beta", "simpo_gamma"), "orpo": ("orpo_lambda",)}


@dataclass
class PrefOptions(StageOptions):
    """The pair loss and its weights (`train.pref_loss`); the defaults are the published ones."""

    loss: str = "dpo"  # dpo | simpo | orpo
    dpo_beta: float = 0.1  # DPO paper (Rafailov et al. 2023) and trl's DPOConfig
    simpo_beta: float = 2.0  # SimPO paper's Llama-3-Base recipe (Meng et al. 2024): beta 2.0,
    simpo_gamma: float = 1.0  # gamma_beta_ratio 0.5
    orpo_lambda: float = 0.1  # ORPO paper (Hong et al. 2024) and trl's ORPOConfig beta

    # Below these a weight underflows the loss (dpo_beta=1e-300 trains with zero gradient at exactly ln 2);
    # above them the sigmoid saturates at the first step.
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "dpo_beta": (1e-3, 100.0), "simpo_beta": (1e-3, 100.0), "simpo_gamma": (0.0, 100.0),
        "orpo_lambda": (1e-4, 100.0)}

    def check_options(self, set_fields: tuple[str, ...]) -> None:
        if self.loss not in LOSSES:
            raise OptionsError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        weights = {name for names in LOSSES.values() for name in names}
        unused = [name for name in set_fields if name in weights and name not in LOSSES[self.loss]]
        if unused:
            owner = next(loss for loss, names in LOSSES.items() if unused[0] in names)
            raise OptionsError(f"{unused[0]} is a setting of loss={owner}, and this run's loss is {self.loss}; "
                               f"drop it, or add --set loss={owner}")


@dataclass(frozen=True)
class PrefStage(LMStage):
    objective: Objective = Objective()  # bound to the run's config by `for_config`

    def for_config(self, cfg) -> PrefStage:
        return dataclasses.replace(self, objective=Objective.from_options(cfg.stage))

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
        pairs_per_batch = max(1, batch_size // 2)  # two sequences per pair
        for i in range(0, len(positions), pairs_per_batch):
            rows = positions[i : i + pairs_per_batch]
            reference = torch.from_numpy(starts.reference[rows]).to(device)
            with autocast():
                nll, counts = pref_reference.pair_rows(model, split, pairs, starts.index[rows], block_size, device)
            losses, metrics = self.objective.pair_losses(nll, counts, reference)
            sums += torch.stack([losses.sum(), torch.tensor(float(len(rows)), device=device),
                                 *(metrics[name] for name in VAL_METRICS)]).double()
        model.train(was_training)
        return sums.tolist()

    def prepare(self, ctx: PrepareContext) -> Prepared:
        """The reference log-probs: computed by the initial model on a fresh run, read back on a resumed one,
        and attached to the sampler and the val pairs."""
        prepared = super().prepare(ctx)
        need_train = self.objective.needs_reference
        parts = pref_reference.load(ctx, prepared.val_starts[0]) if ctx.resuming is not None else None
        if parts is None or (need_train and "train" not in parts):
            if ctx.resuming is not None:
                began = ctx.resuming.get("config", {})
                began = (began.get("stage") or {}).get("loss", began.get("loss"))
                raise pref_reference.ReferenceError(
                    f"{pref_reference.path_of(ctx)}: holds no training pairs' log-probs (the run began with "
                    f"loss={began}); DPO needs them: start a new run")
            with adapters_off(ctx.model):  # a LoRA run's reference is its base: peft's disable_adapter, no copy
                parts = pref_reference.compute(ctx, prepared.val_starts[0], need_train)
        prepared.sampler.reference = parts.get("train")
        if isinstance(prepared.val_starts[0], EvalPairs):
            prepared.val_starts[0].reference = parts["val"]
        return prepared

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


# trl's DPOConfig learning rate (1e-6; Zephyr used 5e-7 at 7B), a 10% warmup as LLaMA-Factory's DPO
# examples, no weight decay (as SFT). batch_size counts sequences: 64 = 32 pairs. The demo's tiny model
# learns its pairs' preference in a few dozen steps at 5e-4 (measured).
OVERLAY = {
    "*": dict(lr=1e-6, lora_lr=1e-5, warmup_steps=100, weight_decay=0.0, max_steps=1000, batch_size=64, eval_every=100,
              ckpt_every=250, sample_prompt="什么是数学？"),
    "tiny": dict(lr=5e-4, lora_lr=5e-3, warmup_steps=5, batch_size=8, max_steps=40, eval_every=20, ckpt_every=40),
}

HELP = """Preference-tune on a `prep pref` token folder, from --init: --set loss=dpo (default), simpo or orpo.

\b
dpo    -log sigmoid(beta * (chosen - rejected log-ratio to the reference)); dpo_beta 0.1 (DPO paper)
simpo  -log sigmoid(beta * (mean chosen - mean rejected log-prob) - gamma); simpo_beta 2.0, simpo_gamma 1.0
       (SimPO's Llama-3-Base recipe); no reference model
orpo   chosen NLL - lambda * log sigmoid(log odds ratio); orpo_lambda 0.1 (ORPO paper); no reference model
For DPO, the --init model scores every pair once before the first step (kept in OUT/reference_logps.npz).
batch_size and micro_batch_size count sequences, two per pair. A setting of another loss is an error."""

PLAN_NOTE = ("a micro-batch of m sequences is m/2 pairs and needs what m SFT sequences need (each row's loss is "
             "checkpointed per chunk); the reference model is never held: its log-probs are computed once, before "
             "the first step, by a forward pass over the pairs.")

DPO = PrefStage("dpo", "pref", "prep pref", needs_init=True, chat=True, turn_starts=False, metrics=TRAIN_METRICS,
                val_metrics=VAL_METRICS, bits_per_byte=False, help=HELP,
                init_help="SFT run (or any run or checkpoint folder) whose weights are the policy's start and DPO's "
                          "reference",
                options=PrefOptions, overlay=OVERLAY, run_files=(pref_reference.FILE,),
                report_metrics=("reward_acc",), plan_note=PLAN_NOTE, make_summary="preference-tune", make_data="data_bin/pref", make_init="runs/sft")
