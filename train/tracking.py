"""Experiment tracking beside ``metrics.jsonl``: ``--log tensorboard`` and ``--log wandb`` (repeatable).

`train.metrics.MetricsLog` hands every record it writes to each tracker here, on rank 0 only, so the
trackers see exactly the lines of ``metrics.jsonl``: a train line's ``loss``, ``lr``, ``tokens_per_s``,
``mfu``, ``grad_norm`` and an eval line's ``val_loss``, ``val_bpb`` and, for a mixture, each folder's
as ``val_loss/wiki`` and ``val_bpb/wiki``, all at the record's step.

* TensorBoard: event files in ``RUN/tb/`` (``tensorboard --logdir runs``). A resumed run drops the
  events the interrupted run wrote after its checkpoint (``purge_step``), as ``metrics.jsonl`` does.
* Weights & Biases: project ``$WANDB_PROJECT`` (default ``zh-mini-llm``), run named after the run
  folder, its files in ``RUN/wandb/`` unless ``$WANDB_DIR`` says otherwise. The run id is kept in
  ``RUN/wandb_id.txt``, so a resumed run continues the same wandb run. ``WANDB_MODE=offline`` needs
  no network or account (``wandb sync`` uploads later).

Both packages are optional extras (``pip install -e '.[track]'``), imported only when asked for; a
missing one is a one-line error before training starts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
from collections.abc import Sequence

from common.errors import UserError
from common.outputs import atomic_file
from model.io import RunFolder

TRACKERS = ("tensorboard", "wandb")


class TrackingError(UserError, ValueError):
    """A tracker cannot start (package missing, wandb not logged in). One line."""


def check_available(kinds: Sequence[str]) -> None:
    """Refuse an unknown tracker or one whose package is not installed (cheap: nothing is imported)."""
    for kind in kinds:
        if kind not in TRACKERS:
            raise TrackingError(f"--log {kind}: unknown tracker; choose from {', '.join(TRACKERS)}")
        if not installed(kind):
            raise TrackingError(f"--log {kind}: the {kind} package is not installed; pip install {kind} "
                                "(or pip install -e '.[track]' for both trackers)")


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def scalars(record: dict) -> tuple[int, dict[str, float]]:
    """A metrics record as (step, {tag: number}): finite numbers only, a mixture's folders as ``name/folder``."""
    values: dict[str, float] = {}
    for key, value in record.items():
        if key == "sources" and isinstance(value, dict):
            for name, figures in value.items():
                values |= {f"{k}/{name}": v for k, v in figures.items() if _number(v)}
        elif key != "step" and _number(value):
            values[key] = float(value)
    return int(record["step"]), values


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardTracker:
    def __init__(self, run: RunFolder, config: dict, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events at or after it in earlier files (the interrupted run's) are dropped
        self.writer = SummaryWriter(str(run.tensorboard), flush_secs=10,
                                    purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            text = json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: shown verbatim

    def log(self, record: dict) -> None:
        step, values = scalars(record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run: RunFolder, config: dict, resume_step: int | None):
        import wandb

        where = {} if os.environ.get("WANDB_DIR") else {"dir": str(run.path)}
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "zh-mini-llm"),
                                  name=run.path.resolve().name, id=_wandb_id(run), resume="allow", config=config,
                                  settings=wandb.Settings(console="off"), **where)
        except Exception as e:  # noqa: BLE001 - wandb raises many kinds (no login, no network, bad settings)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TrackingError(f"--log wandb: {first[:300]} (log in with `wandb login`, or set "
                                "WANDB_MODE=offline and `wandb sync` later)") from None

    def log(self, record: dict) -> None:
        step, values = scalars(record)
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_id(run: RunFolder) -> str:
    """The run folder's wandb id, made (and kept) the first time."""
    path = run.wandb_id
    if path.is_file():
        kept = path.read_text("utf-8").strip()
        if kept.isalnum():
            return kept
    new = secrets.token_hex(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(new + "\n", "utf-8")
    return new


def open_trackers(kinds: Sequence[str], run: RunFolder, config: dict, resume_step: int | None) -> list:
    """The trackers asked for, started (rank 0). `config` is what they record about the run."""
    check_available(kinds)
    classes = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    started = []
    try:
        for kind in dict.fromkeys(kinds):  # --log wandb --log wandb is one tracker
            started.append(classes[kind](run, config, resume_step))
    except BaseException:
        for tracker in started:
            tracker.close()
        raise
    return started
