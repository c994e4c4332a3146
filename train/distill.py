"""Training with a teacher's sparse targets: ``--set kd_weight=W`` on pretrain and SFT.

A token folder written by ``python -m model teach`` holds, beside each token, K ids the teacher sampled for
it with their counts (`prep.tokenfile`). With kd_weight W > 0 the stage samples exactly the windows it
samples without a teacher (the same (seed, step, index) draws), adds the teacher targets aligned with y,
and the loss becomes (1 - W)·CE + W·KD per trained token (`model.distill_loss`), summed and divided by
the step's global target count like plain training, so it is exact across micro-batches and ranks. The
parts are logged as ``ce`` and ``kd`` (means per target token). Validation stays plain next-token loss, so
val bpb compares runs with and without a teacher. W = 0 is plain training and needs no targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from common.errors import UserError
from prep.tokenfile import Split
from train.data import BlockSampler, MixtureSampler, read_windows
from train.options import StageOptions, shared
from train.stage import LMStage


class DistillError(UserError, ValueError):
    """kd_weight asked of data or a stage that cannot give it."""


@shared("pretrain", "sft")
@dataclasses.dataclass
class DistillOptions(StageOptions):
    """``--set kd_weight=W`` on pretrain and sft (``cfg.stage.kd_weight``)."""

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"kd_weight": (0.0, 1.0)}
    kd_weight: float = 0.0  # 0 = plain cross-entropy, 1 = distillation only


def read_teacher(split: Split, starts: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher targets aligned with y of the windows at `starts`: (ids, counts), (B, T, K); padding
    past the split's end gets count 0 (its mask is 0 too)."""
    n = split.n_tokens
    positions = np.asarray(starts, np.int64)[:, None] + np.arange(1, block_size + 1)  # y's positions
    inside = positions < n
    at = np.minimum(positions, n - 1)
    ids = np.asarray(split.teach_ids[at.reshape(-1)], np.int64).reshape(*at.shape, -1)
    counts = np.asarray(split.teach_counts[at.reshape(-1)]).reshape(*at.shape, -1) * inside[..., None]
    return ids, counts.astype(np.uint8)


class DistillSampler:
    """The windows of `base` (a `BlockSampler` or `MixtureSampler`) with their teacher targets."""

    def __init__(self, base: BlockSampler | MixtureSampler):
        self.base = base
        samplers = base.samplers if isinstance(base, MixtureSampler) else [base]
        self.splits = [s.split for s in samplers]
        self.k = self.splits[0].teach_ids.shape[1]
        self.block_size = base.block_size
        self.micro_batch_size = base.micro_batch_size

    def micro_batch(self, step: int, index: int) -> tuple[np.ndarray, ...]:
        sources, starts = self.base.draw(step, index)  # the windows the stage draws without a teacher
        shape = (self.micro_batch_size, self.block_size)
        x, y, mask = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, bool)
        ids, counts = np.zeros((*shape, self.k), np.int64), np.zeros((*shape, self.k), np.uint8)
        for k, split in enumerate(self.splits):
            rows = np.flatnonzero(sources == k)
            if len(rows):
                x[rows], y[rows], mask[rows] = read_windows(split, starts[rows], self.block_size)
                ids[rows], counts[rows] = read_teacher(split, starts[rows], self.block_size)
        return x, y, mask, ids, counts


@dataclasses.dataclass(frozen=True)
class DistillStage(LMStage):
    """An LM stage (pretrain, sft) whose loss mixes in the teacher's targets at `kd_weight`."""

    kd_weight: float = 0.0

    def sampler(self, splits: Sequence[Split], weights: Sequence[float], block_size: int, micro_batch_size: int,
                seed: int) -> DistillSampler:
        ks = {split.teach_ids.shape[1] for split in splits}
        if len(ks) > 1:
            raise DistillError(f"the folders of the mixture hold teacher targets with different K ({sorted(ks)})")
        return DistillSampler(super().sampler(splits, weights, block_size, micro_batch_size, seed))

    def check_trainable(self, path, split: Split) -> str | None:
        if split.teach_ids is None:
            return (f"{path}: kd_weight={self.kd_weight} needs teacher targets beside the tokens, and this folder has "
                    "none; make them with `make teach DATA=... TEACHER=...` (python -m model teach), or train with "
                    "kd_weight=0")
        return super().check_trainable(path, split)

    def micro_loss(self, forward, micro: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, mask, ids, counts = micro
        loss_sum, _, parts = forward(x, y, mask, teacher=(ids, counts, self.kd_weight))
        return loss_sum, parts


def with_distillation(stage, kd_weight: float):
    """`stage` as it trains at `kd_weight`: itself at 0, its distilling form above (LM stages only)."""
    if not kd_weight:
        return stage
    if type(stage) is not LMStage:
        raise DistillError(f"kd_weight is for pretrain and sft; train {stage.name} has no teacher targets to use")
    fields = {f.name: getattr(stage, f.name) for f in dataclasses.fields(LMStage)}
    return DistillStage(**{**fields, "metrics": ("ce", "kd")}, kd_weight=kd_weight)
