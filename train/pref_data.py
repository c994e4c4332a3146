"""Pairs of a ``pref`` token folder as training rows, and the pair sampler.

Layout (`prep.pref`): each document is one pair, the chosen dialog then the rejected dialog, each
ending in ``<|endoftext|>``; ``{split}.turns.idx`` holds the start of both dialogs (two entries per
pair). A pair becomes two rows of a micro-batch, each a window from its dialog's start, cut at its end
(the loss mask is 0 past it, and on the padding). A micro-batch of P pairs is 2P rows: the P chosen
dialogs, then the P rejected ones, so the loss finds pair i at rows i and P + i.

The sampler draws pairs uniformly with a generator seeded by (seed, step, micro index), as
`train.data.BlockSampler` draws windows: the batch is a pure function of those, so resuming needs no
sampler state and two ranks see what one process with twice the accumulation sees. Each micro-batch
also carries its pairs' reference log-probs (`train.pref_reference`; zeros before they exist).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import UserError
from prep.tokenfile import Split
from train.data import read_windows


class PrefDataError(UserError, ValueError):
    """A preference folder the stage cannot train on as it is (pairs longer than the block, a mixture)."""


@dataclass(frozen=True)
class Pairs:
    """Where each pair's two dialogs lie in a split: ``starts`` and ``ends``, both (n_pairs, 2)."""

    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, split: Split) -> Pairs:
        turns = np.asarray(split.turn_starts if split.turn_starts is not None else [], dtype=np.int64)
        if len(turns) != 2 * split.n_docs:
            raise PrefDataError(f"split {split.name!r}: {len(turns)} dialog starts for {split.n_docs} pairs; "
                                "not a `prep pref` folder, or a damaged one: rerun prep pref")
        starts = turns.reshape(-1, 2)
        ends = np.stack([starts[:, 1], np.asarray(split.doc_starts[1:], dtype=np.int64)], axis=1)
        return cls(starts, ends)

    def __len__(self) -> int:
        return len(self.starts)

    def longest(self) -> int:
        return int((self.ends - self.starts).max()) if len(self) else 0


def read_pairs(split: Split, pairs: Pairs, index: np.ndarray, block_size: int) -> tuple[np.ndarray, ...]:
    """``(x, y, mask)`` of shape (2P, T) for pairs `index`: chosen rows first, then rejected."""
    starts = np.concatenate([pairs.starts[index, 0], pairs.starts[index, 1]])
    ends = np.concatenate([pairs.ends[index, 0], pairs.ends[index, 1]])
    x, y, mask = read_windows(split, starts, block_size)
    inside = starts[:, None] + 1 + np.arange(block_size) < ends[:, None]  # the target is in this dialog
    return x, y, mask & inside


def check_fits(split: Split, pairs: Pairs, block_size: int) -> None:
    """Every dialog must fit one window (block_size + 1 tokens), or its reply would be cut."""
    too_long = int(((pairs.ends - pairs.starts) > block_size + 1).any(axis=1).sum())
    if too_long:
        raise PrefDataError(f"split {split.name!r}: {too_long:,} of {len(pairs):,} pairs have a dialog longer than "
                            f"block_size + 1 = {block_size + 1} tokens (the longest: {pairs.longest()}); run "
                            f"`prep pref --max-len {block_size + 1}` (it drops oldest turns, never a reply)")


class PairSampler:
    """Micro-batches of pairs, ``(x, y, mask, reference)``, as a pure function of (seed, step, micro index).

    `micro_batch_size` counts rows (sequences), as for the other stages, so memory plans and tokens/s
    stay comparable: a micro-batch holds ``micro_batch_size // 2`` pairs.
    """

    def __init__(self, split: Split, block_size: int, micro_batch_size: int, seed: int):
        if micro_batch_size < 2 or micro_batch_size % 2:
            raise PrefDataError(f"micro_batch_size {micro_batch_size}: a preference micro-batch holds whole pairs "
                                "(two sequences each); use an even number")
        self.split, self.block_size, self.seed = split, block_size, seed
        self.pairs = Pairs.of(split)
        if not len(self.pairs):
            raise PrefDataError(f"split {split.name!r} has no pairs")
        check_fits(split, self.pairs, block_size)
        self.n_pairs = micro_batch_size // 2
        self.reference: np.ndarray | None = None  # (n_pairs, 2) log-probs, set by the stage's prepare

    def micro_batch(self, step: int, index: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, step, index])
        chosen = rng.integers(0, len(self.pairs), self.n_pairs)
        x, y, mask = read_pairs(self.split, self.pairs, chosen, self.block_size)
        ref = self.reference[chosen] if self.reference is not None else np.zeros((self.n_pairs, 2))
        return x, y, mask, np.ascontiguousarray(ref, dtype=np.float32)


@dataclass
class EvalPairs:
    """The fixed validation pairs of a split (evenly spread) and, once known, their reference log-probs."""

    index: np.ndarray
    reference: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)


def eval_pairs(split: Split, n: int) -> EvalPairs:
    total = split.n_docs
    if not total:
        return EvalPairs(np.zeros(0, np.int64))
    return EvalPairs(np.unique(np.linspace(0, total - 1, n).round().astype(np.int64)))
