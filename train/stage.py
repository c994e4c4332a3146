"""What a training stage is: the data it reads, where it starts from, its settings, and how it samples,
scores and evaluates. The Trainer asks its stage; it never tests which stage it runs.

A stage is one module in `train.stages` plus one line in that package's list, which registers it here
(this module imports no stage). Everything about it is declared on it and read from the registry: the
``python -m train NAME`` command and its help (`train.cli`), ``train plan --stage`` and ``train
report``, the trainer's run-folder test (`run_files`), the Makefile's stage targets (`make_data`,
`make_init`: `train.stages.makefile`), its settings nested in the run config as ``cfg.stage``
(`options`, a `train.options.StageOptions` class) and its preset overlay per size (`overlay`).

The hooks, all called by `train.trainer.Trainer` (and `train.step.Stepper` for the loss):

* `prepare`: one-time work before the first step, given a narrow `PrepareContext` (the model, the
  process group, the splits, the run folder, the console, the checkpoint it resumes, autocast); it
  returns the `Prepared` sampler and eval windows (a preference stage first attaches the reference
  model's log-probabilities to them). The sampler's micro-batches are a pure function of (seed, step,
  index) (`train.data`), built on the host and prefetched. A stage whose batches the current model
  produces on the device (rollouts) would return a ``loader`` instead: an object with the
  `train.data.StepLoader` methods (``get(step)``, ``close()``) that generates them with ``ctx.model``;
  the Trainer uses it in place of the prefetching loader;
* `count`: the units a micro-batch's loss is summed over (target tokens; pairs for a preference loss),
  so the step divides by the whole step's count over all micro-batches and ranks;
* `micro_loss`: ``(loss_sum, metric_sums)`` of one micro-batch on the (compiled, DDP) forward;
* `eval_starts` and `eval_sums`: the fixed validation windows and their summed loss (and metrics);
* `for_config`: the stage bound to the run's config (a preference stage takes its loss and weights
  from ``cfg.stage``), asked once the config is final;
* `eval_note`: a warning about an eval's figures for the run's console (or None).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from prep.tokenfile import Split
from train.data import BlockSampler, MixtureSampler, eval_starts, make_sampler
from train.evaluate import evaluate_windows
from train.options import StageOptions, options_class


@dataclass
class PrepareContext:
    """What a stage's `prepare` may use: the run's model, process group, config and data, and where to write."""

    model: torch.nn.Module
    d: object  # train.dist.Dist: device, rank, world_size, all_reduce_sum
    cfg: object  # train.config.TrainConfig, final (micro-batch resolved)
    train_splits: Sequence[Split]
    val_splits: Sequence[Split]
    weights: Sequence[float]  # a mixture's weights, one per train split
    data_record: dict  # train.mixture.Mixture.record(): folders, weights, meta.json digests
    run_folder: object  # model.io.RunFolder
    console: object | None  # rank 0's console; None on the other ranks
    resuming: dict | None  # the checkpoint's train_config.json when the run continues one, else None
    parent: dict  # the --init record: its path and identity (`train.checkpoint.parent_record`)
    autocast: Callable = contextlib.nullcontext

    @property
    def main(self) -> bool:
        return self.console is not None


@dataclass
class Prepared:
    """What `prepare` returns: the training batches' source and each val folder's fixed windows."""

    sampler: object  # .micro_batch(step, index) -> a host micro-batch (train.data.BlockSampler, ...), or None with `loader`
    val_starts: list
    loader: object | None = None  # a device-side producer (rollouts) used in place of the prefetching loader


@dataclass(frozen=True)
class LMStage:
    """Next-token prediction on the targets of a token folder: pretraining, SFT (masked)."""

    name: str
    data_kind: str  # the token-file kind it trains on (prep.tokenfile.KINDS)
    prep_command: str  # the prep command that makes such a folder, for error messages
    needs_init: bool  # starts from a trained model (--init), whose function it keeps (`train.inherit`)
    chat: bool  # the model it makes is a chat model (ChatML prompts, stops at <|im_end|>)
    turn_starts: bool  # blocks start at user turns, never inside a reply whose question they cannot see
    metrics: tuple[str, ...] = ()  # names of the metric sums `micro_loss` returns, beside the loss
    val_metrics: tuple[str, ...] = ()  # names of the metric sums `eval_sums` returns after (loss, count)
    bits_per_byte: bool = True  # its val loss converts to bits per byte of the trained text
    help: str = ""  # the command's help (`python -m train NAME --help`): its first line is the summary
    init_help: str = "run (or checkpoint) folder whose weights this stage starts from"
    options: type[StageOptions] = StageOptions  # its own settings (cfg.stage); shared groups join them
    # its preset overlay: field values applied over a size preset, "*" for every size, then a size's own
    overlay: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    run_files: tuple[str, ...] = ()  # files it writes into the run folder before the first metrics line
    report_metrics: tuple[str, ...] = ()  # val metrics `train report` shows (the last eval's)
    plan_note: str = ""  # what `train plan --stage NAME` adds about this stage's memory
    make_data: str = ""  # the Makefile target's default DATA (a token folder); "" for no target
    make_init: str = ""  # ... and default INIT (the run it starts from), for a stage that needs one
    make_summary: str = ""  # its `make help` line's first words (default: its name)

    def option_class(self) -> type[StageOptions]:
        """This stage's settings: its own `options` and every shared group that names it (`train.options`)."""
        return options_class(self.name, self.options)

    def overlay_for(self, size: str) -> dict:
        """The field values this stage sets over size preset `size`."""
        return {**self.overlay.get("*", {}), **self.overlay.get(size, {})}

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

    def prepare(self, ctx: PrepareContext) -> Prepared:
        """The sampler and each val folder's fixed windows (cfg.eval_blocks each); LM stages need nothing else."""
        cfg = ctx.cfg
        T = cfg.model.block_size
        sampler = self.sampler(ctx.train_splits, ctx.weights, T, cfg.micro_batch_size, cfg.seed)
        val_starts = [self.eval_starts(split, T, cfg.eval_blocks) if split.n_tokens >= 2 else np.zeros(0, np.int64)
                      for split in ctx.val_splits]
        return Prepared(sampler, val_starts)

    def for_config(self, cfg) -> LMStage:
        """This stage with whatever it takes from the run's config (``cfg.stage``; nothing for LM stages)."""
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


class StageError(ValueError):
    """A stage name that is not registered."""


def register(stage: LMStage) -> LMStage:
    """Add a stage (the list `train.stages` registers the shipped ones)."""
    STAGES[stage.name] = stage
    return stage


def get(name: str) -> LMStage:
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return STAGES[name]
