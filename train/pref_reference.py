"""The reference model's log-probabilities of every pair, computed once and kept with the run.

DPO compares the policy with the model it started from. Rather than hold a second, frozen model in
memory for the whole run, the initial checkpoint scores every pair once, before the first step (one
forward pass over the data, no backward: about a third of a training step per pair), and the sums are
written to ``RUN/reference_logps.npz``. A resumed run reads them back, so it continues exactly; the
trained weights could not recompute them. The validation pairs are always scored (their reference
is where `chosen_shift` starts), the training pairs only when the loss needs them (DPO).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from common.errors import UserError
from common.outputs import atomic_file
from prep.tokenfile import Split
from train.pref_data import EvalPairs, Pairs, read_pairs

FILE = "reference_logps.npz"  # in the run folder, written before the first step (`train.stages.dpo`)


class ReferenceError(UserError, ValueError):
    """The kept reference log-probs are missing or belong to other data."""


def pair_rows(model, split: Split, pairs: Pairs, index: np.ndarray, block_size: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows' summed NLL and target counts, (2P,) each, for pairs `index` (chosen rows first)."""
    x, y, mask = (torch.from_numpy(a).to(device) for a in read_pairs(split, pairs, index, block_size))
    return model(x, y, mask, per_row=True)


@torch.no_grad()
def score_pairs(model, split: Split, index: np.ndarray, block_size: int, batch_pairs: int, device: torch.device,
                autocast=contextlib.nullcontext, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """(len(index), 2) float64 log-probs (chosen, rejected) of pairs `index`; this rank fills its share
    (every `world_size`-th pair), the rest stays 0, so a sum over ranks gives them all."""
    pairs = Pairs.of(split)
    out = torch.zeros(len(index), 2, dtype=torch.float64, device=device)
    mine = np.arange(len(index))[rank::world_size]
    was_training = model.training
    model.eval()
    for i in range(0, len(mine), batch_pairs):
        rows = mine[i : i + batch_pairs]
        with autocast():
            nll, _ = pair_rows(model, split, pairs, index[rows], block_size, device)
        out[torch.from_numpy(rows).to(device)] = -nll.double().view(2, -1).t()
    model.train(was_training)
    return out


def data_identity(ctx) -> str:
    return ctx.data_record["sources"][0]["meta_sha256"]


def path_of(ctx):
    """The run folder's reference file (`ctx`: a `train.stage.PrepareContext`)."""
    return ctx.run_folder.path / FILE


def compute(ctx, val, train_pairs: bool) -> dict[str, np.ndarray]:
    """Score the val pairs `val` (and the train pairs if asked) with the model as it is now (the initial one)."""
    d, cfg, T = ctx.d, ctx.cfg, ctx.cfg.model.block_size
    batch = max(1, cfg.micro_batch_size // 2)
    t0 = time.perf_counter()
    parts = {"val": val.index if isinstance(val, EvalPairs) else np.zeros(0, np.int64)}  # an empty val split
    if train_pairs:
        parts["train"] = np.arange(ctx.train_splits[0].n_docs)
    splits = {"val": ctx.val_splits[0], "train": ctx.train_splits[0]}
    out = {}
    for name, index in parts.items():
        scores = score_pairs(ctx.model, splits[name], index, T, batch, d.device, ctx.autocast, d.rank, d.world_size)
        out[name] = d.all_reduce_sum(scores).cpu().numpy().astype(np.float32)
    if ctx.main:
        n = sum(len(v) for v in out.values())
        ctx.console.print(f"reference log-probs of {n:,} pairs by the initial model in "
                          f"{time.perf_counter() - t0:.1f}s (once; kept in {path_of(ctx)})")
        save(path_of(ctx), out, data_identity(ctx))
    return out


def save(path, parts: dict[str, np.ndarray], identity: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # the run folder's first file
    with atomic_file(path, "the reference log-probs") as tmp, open(tmp, "wb") as f:
        np.savez(f, identity=np.array(identity), **parts)


def load(ctx) -> dict[str, np.ndarray]:
    """The kept log-probs (rank 0 reads them; every rank gets rank 0's copy, or its reason to stop)."""
    parts, problem = None, None
    if ctx.main:
        try:
            parts = _read(path_of(ctx), data_identity(ctx))
        except ReferenceError as e:
            problem = str(e)
    if ctx.d.enabled:  # the other ranks wait here: they must not be left waiting if rank 0 stops
        box = [(parts, problem)]
        torch.distributed.broadcast_object_list(box, src=0)
        parts, problem = box[0]
    if problem:
        raise ReferenceError(problem)
    return parts


def _read(path, identity: str) -> dict[str, np.ndarray]:
    fresh = "start a new run (another --out), or delete the checkpoint to start this one over"
    if not path.is_file():
        raise ReferenceError(f"{path}: missing; the reference log-probs of this run cannot be recomputed from "
                             f"its trained weights: {fresh}")
    try:
        with np.load(path, allow_pickle=False) as f:
            parts = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ReferenceError(f"{path}: unreadable ({e}); {fresh}") from None
    if str(parts.pop("identity", "")) != identity:
        raise ReferenceError(f"{path}: computed on other data than --data; {fresh}")
    return parts
