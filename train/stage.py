"""What a training stage is: the data it reads, where it starts from, and how it samples, scores and
evaluates. The Trainer asks its stage; it never tests which stage it runs.

``pretrain`` and ``sft`` are two instances of `LMStage` (next-token loss over the masked targets); a
preference stage is a subclass with its own sampler, loss and evaluation, registered the same way.
`register` adds one; `get` finds it by the name ``python -m train NAME`` uses.

The hooks, all called by `train.trainer.Trainer` (and `train.step.Stepper` for the loss):

* `sampler`: the micro-batches of a step, a pure function of (seed, step, index) (`train.data`);
* `count`: the units a micro-batch's loss is summed over (target tokens; pairs for a preference loss),
  so the step divides by the whole step's count over all micro-batches and ranks;
* `micro_loss`: ``(loss_sum, metric_sums)`` of one micro-batch on the (compiled, DDP) forward;
* `eval_starts` and `eval_sums`: the fixed validation windows and their summed loss (and metrics);
* `prepare`: one-time work before the first step (e.g. a reference model's log-probabilities);
* `for_config`: the stage bound to the run's config (a preference stage takes its loss and weights
  from it), asked once the config is final;
* `eval_note`: a warning about an eval's figures for the run's console (or None).

`train.pref` registers the preference stage (``dpo``) on first use of `get`, as `model.arch` does
its built-in architectures: it imports this module, so this one cannot import it at the top.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prep.tokenfile import Split
from train.data import BlockSampler, MixtureSampler, eval_starts, make_sampler
from train.evaluate import evaluate_windows


@dataclass(frozen=True)
class LMStage:
    """Next-token prediction on the targets of a token folder: pretraining, SFT (masked)."""

    name: str
    data_kind: str  # the token-file kind it trains on (prep.tokenfile.KINDS)
    prep_command: str  # the prep command that makes such a folder, for error messages
    needs_init: bool  # starts from a trained model (--init); its shape fields come from that model
    chat: bool  # the model it makes is a chat model (ChatML prompts, stops at <|im_end|>)
    preset_suffix: str  # a preset NAME means NAME + suffix where that exists (tiny -> tiny-sft)
    turn_starts: bool  # blocks start at user turns, never inside a reply whose question they cannot see
    metrics: tuple[str, ...] = ()  # names of the metric sums `micro_loss` returns, beside the loss
    val_metrics: tuple[str, ...] = ()  # names of the metric sums `eval_sums` returns after (loss, count)
    bits_per_byte: bool = True  # its val loss converts to bits per byte of the trained text

    def sampler(self, splits: Sequence[Split], weights: Sequence[float], block_size: int, micro_batch_size: int,
                seed: int) -> BlockSampler | MixtureSampler:
        return make_sampler(splits, weights, block_size, micro_batch_size, seed, self.turn_starts)

    def count(self, micro: tuple[np.ndarray, ...]) -> int:
        return int(micro[2].sum())  # (x, y, mask): the target tokens

    def micro_loss(self, forward, micro: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, mask = micro
        loss_sum, _ = forward(x, y, mask)
        return loss_sum, {}

    def eval_starts(self, split: Split, block_size: int, n_blocks: int) -> np.ndarray:
        return eval_starts(split, block_size, n_blocks, self.turn_starts)

    def eval_sums(self, model, split: Split, starts: np.ndarray, block_size: int, batch_size: int,
                  device: torch.device, autocast=contextlib.nullcontext, rank: int = 0,
                  world_size: int = 1) -> list[float]:
        """``[loss_sum, count, *val_metric sums]`` over this rank's share of the windows."""
        return list(evaluate_windows(model, split, starts, block_size, batch_size, device, autocast, rank, world_size))

    def prepare(self, trainer) -> None:
        """One-time work after the model is built and before the first step (none for LM stages)."""

    def for_config(self, cfg) -> LMStage:
        """This stage with whatever it takes from the run's `train.config.TrainConfig` (nothing for LM stages)."""
        return self

    def eval_note(self, record: dict) -> str | None:
        """A warning about an eval record (``val_loss``, ``val_<metric>`` ...), or None."""
        return None

    def check_trainable(self, path, split: Split) -> str | None:
        """Why `split` cannot train this stage, or None."""
        if split.mask is not None and not split.mask.any():  # the mask itself, not meta.json's count of it
            return (f"{path}: no token of the train split is a training target (every loss-mask entry is 0), so "
                    f"there is nothing to learn; check the {self.prep_command} output with `prep inspect`")
        return None


STAGES: dict[str, LMStage] = {}


def register(stage: LMStage) -> LMStage:
    STAGES[stage.name] = stage
    return stage


def get(name: str) -> LMStage:
    import train.pref  # noqa: F401 - registers the preference stage on first use (it imports this module)

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return STAGES[name]


PRETRAIN = register(LMStage("pretrain", "pretrain", "prep wiki (or prep text)", needs_init=False, chat=False,
                            preset_suffix="", turn_starts=False))
SFT = register(LMStage("sft", "sft", "prep sft", needs_init=True, chat=True, preset_suffix="-sft", turn_starts=True))
