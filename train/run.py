"""What a training run is asked (`RunSpec`) and what it answers (`RunResult`), and how it stops.

`StopFlag` turns Ctrl-C, SIGTERM and SIGHUP into a clean stop within seconds (a step under way is
abandoned, never half-applied); `step_seed` is the
per-step RNG seed that makes a resumed run draw what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from model.io import RunFolder
from train.metrics import source_figures


@dataclass
class RunSpec:
    stage: str  # a `train.stage` name: pretrain, sft, ...
    data: str | Path  # a token folder, or a mixture FOLDER:WEIGHT,FOLDER:WEIGHT (train.mixture)
    out: Path
    init: Path | None = None  # a stage that needs one: the run (or checkpoint) folder to start from
    stop_at: int | None = None  # checkpoint and exit after this step, keeping the schedule of max_steps
    allow_data_change: bool = False  # resume on other data than the checkpoint's mixture
    log: tuple[str, ...] = ()  # trackers fed beside metrics.jsonl: tensorboard, wandb (train.tracking)


@dataclass
class RunResult:
    step: int
    reason: str  # "done", "stop_at" or "interrupted"
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    val_step: int | None  # the step of the last eval
    tokens_per_s: float | None
    wall_s: float
    signal: int | None = None  # the signal that interrupted the run
    val_sources: dict | None = None  # a mixture's last eval per folder: {name: {"val_loss", "val_bpb"}}


class StepAbandoned(Exception):
    """A stop signal arrived inside a step or an evaluation that can be dropped: the work is abandoned at
    once, never applied (no optimizer step, no checkpoint of a partial step)."""


class StopFlag:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop a run cleanly within seconds: inside an
    `abandonable` section (a step's forward and backward, an evaluation) the work is dropped at once
    (`StepAbandoned`); elsewhere the run stops at the end of the current step. Either way it then writes
    the checkpoint of its last whole step and exits; the same signal again a second later aborts at once.

    With several processes (`immediate` False) no rank may leave a step the others are still in (they
    would wait for it forever), so every rank finishes the step and the ranks agree to stop after it."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self, immediate: bool = True) -> None:
        self.requested_at: float | None = None
        self.signal: int | None = None
        self.previous = {}
        self.immediate, self.urgent = immediate, False

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    @contextlib.contextmanager
    def abandonable(self) -> Iterator[None]:
        """A section a stop signal abandons at once (single process only)."""
        if self.immediate and self.requested:
            raise StepAbandoned
        self.urgent = self.immediate
        try:
            yield
        finally:
            self.urgent = False

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested_at is not None and now - self.requested_at > 1.0:
            raise KeyboardInterrupt
        self.requested_at = self.requested_at or now
        self.signal = self.signal or signum
        if self.urgent:
            self.urgent = False
            raise StepAbandoned

    def __enter__(self) -> StopFlag:
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, no clean stop
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch RNG seed of one step on one rank (dropout): a pure function, so resuming needs no RNG state."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def print_summary(console: Console, r: RunResult, run: RunFolder) -> None:
    what = {"done": "finished", "stop_at": "stopped as asked", "interrupted": "interrupted"}[r.reason]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    console.print(
        f"[bold green]{what}[/] at step {r.step} in {r.wall_s:.0f}s: train loss {fmt(r.train_loss, '.4f')}, "
        f"val loss {fmt(r.val_loss, '.4f')}, val bpb {fmt(r.val_bpb, '.3f')}{escape(source_figures(r.val_sources))} "
        f"(eval at step {fmt(r.val_step, 'd')}), "
        f"{fmt(r.tokens_per_s, ',.0f')} tokens/s. "
        f"Checkpoint {run.checkpoint}, metrics {run.metrics}, plot {run.plot}"
    )
    if r.reason != "done":
        console.print("Run the same command again to continue from the checkpoint.")
