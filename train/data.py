"""The block sampler over the token memmaps, and a loader that prepares the next step in the background.

A window starting at token ``i`` gives ``x = tok[i:i+T]``, ``y = tok[i+1:i+T+1]`` and the loss mask
``mask[i+1:i+T+1]`` (all ones for pretraining). Past the end of the file the window is padded and the
padding is never trained (mask 0); that is the only padding there is.

* Pretraining: windows start anywhere a full window fits.
* SFT: windows start at a user turn (``split.turn_starts``; dialog starts if the folder has none), so
  a block never begins in the middle of a reply whose question it cannot see.

The batch is a pure function of ``(seed, step, global micro-batch index)``. Rank ``r`` with
accumulation ``A`` takes micro indices ``r*A .. r*A+A-1`` of its step, so every rank sees different
data, one process with accumulation ``2A`` sees exactly what two ranks with ``A`` see, and resuming
at step ``s`` needs no saved sampler state. A mixture of token folders (`MixtureSampler`) draws each
block's source from the same generator first, so all of this holds for mixtures too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prep.tokenfile import Split


def read_windows(split: Split, starts: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, mask)`` of shape (len(starts), block_size) for windows at `starts`; padding has mask 0.

    One gather for all windows (a Python loop over rows cost ~10 µs a row, most of the sampler's time):
    position ``j`` of the window at ``i`` is real while its target ``i + j + 1`` is inside the split.
    """
    n, T = split.n_tokens, block_size
    if n == 0 or not len(starts):
        return (np.zeros((len(starts), T), np.int64), np.zeros((len(starts), T), np.int64),
                np.zeros((len(starts), T), bool))
    positions = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(T + 1)  # x at [:-1], y at [1:]
    inside = positions < n
    tokens = np.asarray(split.tokens[np.minimum(positions, n - 1)], dtype=np.int64) * inside
    real = inside[:, 1:]  # the target exists
    mask = real if split.mask is None else real & (split.mask[np.minimum(positions[:, 1:], n - 1)] != 0)
    return tokens[:, :-1] * real, np.ascontiguousarray(tokens[:, 1:]), np.ascontiguousarray(mask)


def window_starts(split: Split, block_size: int, sft: bool) -> np.ndarray | None:
    """Allowed SFT start positions (user turns that have a next token), or None for pretraining."""
    if not sft:
        return None
    starts = split.turn_starts if split.turn_starts is not None and len(split.turn_starts) else split.doc_starts[:-1]
    starts = np.asarray(starts, dtype=np.int64)
    return starts[starts < split.n_tokens - 1]


class BlockSampler:
    """Random training windows of one split, as a pure function of (seed, step, micro index)."""

    def __init__(self, split: Split, block_size: int, micro_batch_size: int, seed: int, sft: bool):
        if split.n_tokens < 2:
            raise ValueError(f"split {split.name!r} has {split.n_tokens} tokens; at least 2 are needed to train")
        self.split, self.block_size, self.micro_batch_size, self.seed = split, block_size, micro_batch_size, seed
        self.starts = window_starts(split, block_size, sft)
        if self.starts is not None and not len(self.starts):
            raise ValueError(f"split {split.name!r} has no user turn to start a block at")
        # pretraining: every start where a whole window fits (or just 0 when the split is shorter)
        self.n_free_starts = max(1, split.n_tokens - block_size)

    def draw_starts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` window starts drawn from `rng` (uniform over the allowed starts)."""
        if self.starts is None:
            return rng.integers(0, self.n_free_starts, n)
        return self.starts[rng.integers(0, len(self.starts), n)]

    def draw(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(source of each row: all 0, start of each row's window)``, as `MixtureSampler.draw` answers."""
        rng = np.random.default_rng([self.seed, step, index])
        return np.zeros(self.micro_batch_size, np.int64), self.draw_starts(rng, self.micro_batch_size)

    def micro_batch(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return read_windows(self.split, self.draw(step, index)[1], self.block_size)


class MixtureSampler:
    """Training windows from several splits, each block's source drawn at its weight (`train.mixture`).

    One generator seeded by (seed, step, micro index) draws every row's source (inverse CDF of a
    uniform), then the rows of each source their starts, source by source: the batch stays a pure
    function of (seed, step, index), so resuming and the split over ranks work as for one split.
    """

    def __init__(self, samplers: Sequence[BlockSampler], weights: Sequence[float], micro_batch_size: int, seed: int):
        if len(samplers) != len(weights) or len(samplers) < 2:
            raise ValueError("a mixture needs two or more splits, one weight each")
        self.samplers, self.micro_batch_size, self.seed = list(samplers), micro_batch_size, seed
        self.block_size = samplers[0].block_size
        self.cumulative = np.cumsum(np.asarray(weights, dtype=np.float64) / float(np.sum(weights)))
        self.cumulative[-1] = 1.0  # rounding must never leave a uniform draw past the last source

    def draw(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(source of each row, start of each row's window in its source)``."""
        rng = np.random.default_rng([self.seed, step, index])
        sources = np.searchsorted(self.cumulative, rng.random(self.micro_batch_size), side="right")
        starts = np.zeros(self.micro_batch_size, dtype=np.int64)
        for k, sampler in enumerate(self.samplers):
            rows = np.flatnonzero(sources == k)
            if len(rows):
                starts[rows] = sampler.draw_starts(rng, len(rows))
        return sources, starts

    def micro_batch(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sources, starts = self.draw(step, index)
        shape = (self.micro_batch_size, self.block_size)
        x, y, mask = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, bool)
        for k, sampler in enumerate(self.samplers):
            rows = np.flatnonzero(sources == k)
            if len(rows):
                x[rows], y[rows], mask[rows] = read_windows(sampler.split, starts[rows], self.block_size)
        return x, y, mask


def make_sampler(splits: Sequence[Split], weights: Sequence[float], block_size: int, micro_batch_size: int,
                 seed: int, sft: bool) -> BlockSampler | MixtureSampler:
    """The sampler of one split (exactly the single-folder batches), or of a weighted mixture of several."""
    samplers = [BlockSampler(split, block_size, micro_batch_size, seed, sft) for split in splits]
    if len(samplers) == 1:
        return samplers[0]
    return MixtureSampler(samplers, weights, micro_batch_size, seed)


def eval_starts(split: Split, block_size: int, n_blocks: int, sft: bool) -> np.ndarray:
    """A fixed, evenly spread set of validation window starts (the same at every eval and every run)."""
    starts = window_starts(split, block_size, sft)
    if starts is None:
        last = max(0, split.n_tokens - block_size - 1)
        return np.unique(np.linspace(0, last, n_blocks).round().astype(np.int64))
    if not len(starts):
        return starts
    pick = np.unique(np.linspace(0, len(starts) - 1, n_blocks).round().astype(np.int64))
    return starts[pick]


def tiling_starts(split: Split, block_size: int) -> np.ndarray:
    """Windows that cover a whole split once: every token from the second on is a target exactly once."""
    return np.arange(0, max(split.n_tokens - 1, 0), block_size, dtype=np.int64)


@dataclass
class StepBatch:
    """One optimizer step's data for this rank: its micro-batches and how many target tokens they hold."""

    step: int
    micro: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    n_targets: int


class StepLoader:
    """Prepares the micro-batches of upcoming steps on a background thread (memmap reads, pinned copies).

    `get(step)` returns the batch for `step` on the device; steps are consumed in order. The host-to-
    device copies are non-blocking from pinned memory, so they overlap the GPU's work.
    """

    def __init__(self, sampler: BlockSampler | MixtureSampler, rank: int, accumulation: int, first_step: int,
                 device: torch.device, count: Callable[[tuple[np.ndarray, ...]], int] = lambda micro: int(micro[2].sum()),
                 depth: int = 2):
        self.sampler, self.rank, self.accumulation, self.device = sampler, rank, accumulation, device
        self.count = count  # what a micro-batch's loss is summed over (`train.stage`): its target tokens by default
        self.pin = device.type == "cuda"
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(first_step,), daemon=True, name="step-loader")
        self.thread.start()

    def host_batch(self, step: int) -> tuple[list[tuple[torch.Tensor, ...]], int]:
        micro, n_targets = [], 0
        for i in range(self.accumulation):
            arrays = self.sampler.micro_batch(step, self.rank * self.accumulation + i)
            n_targets += self.count(arrays)
            tensors = tuple(torch.from_numpy(a) for a in arrays)
            micro.append(tuple(t.pin_memory() for t in tensors) if self.pin else tensors)
        return micro, n_targets

    def _work(self, step: int) -> None:
        while not self.stop.is_set():
            try:
                item = (step, *self.host_batch(step))
            except Exception as e:  # noqa: BLE001 - handed to the training thread, which re-raises it
                item = e
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            step += 1

    def get(self, step: int) -> StepBatch:
        item = self.queue.get()
        if isinstance(item, Exception):
            raise item
        got, micro, n_targets = item
        if got != step:
            raise RuntimeError(f"loader out of order: expected step {step}, got {got}")
        on_device = [tuple(t.to(self.device, non_blocking=True) for t in m) for m in micro]
        return StepBatch(step, on_device, n_targets)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
