"""What a run reports: ``OUT/metrics.jsonl``, ``OUT/loss.png`` and the live view in the terminal.

``metrics.jsonl`` holds one strict JSON object per line (a non-finite value is written as null): train
lines ``{"step", "loss", "lr", "tokens_per_s", "mfu", "grad_norm"}`` and eval lines ``{"step",
"val_loss", "val_bpb"}``; a mixture's eval lines add each folder's figures, ``"sources": {"wiki":
{"val_loss", "val_bpb"}, ...}`` (`train.mixture`). On resume, lines after the checkpoint's step
(written by the interrupted run, and about to be redone) are dropped, so the file reads as if the
run had never stopped. Every record written is also handed to the run's trackers (TensorBoard,
wandb: `train.tracking`), the one place they are fed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from common.outputs import atomic_file, json_safe
from model.io import RunFolder


def read_records(path: Path) -> list[dict]:
    """The records of a metrics file; a line cut short by a kill (or otherwise not a record) is skipped."""
    records = []
    if path.is_file():
        for line in path.read_bytes().splitlines():
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                records.append(_clean(rec))
    return records


def _clean(rec: dict) -> dict:
    """A record with only what a reader can use: figures, and a mixture's per-folder figures."""
    out = {k: v for k, v in rec.items() if k == "step" or _is_figure(v)}
    sources = rec.get("sources")
    if isinstance(sources, dict):
        out["sources"] = {name: {k: v for k, v in figs.items() if _is_figure(v)}
                          for name, figs in sources.items() if isinstance(figs, dict)}
    return out


def _is_figure(value: object) -> bool:
    """A value a metrics record may hold (a hand-edited "1.2" or true is dropped, not trusted)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def strict_json(record: dict) -> str:
    """One JSON line; a non-finite number (at any depth) becomes null, so every reader can parse the file."""
    return json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False)


def source_figures(sources: dict | None) -> str:
    """`` (wiki 3.104/1.213, web 3.602/1.387)``: each folder's val loss / bpb, or "" for one folder."""
    if not sources:
        return ""
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    return " (" + ", ".join(f"{name} {fmt(f.get('val_loss'), '.3f')}/{fmt(f.get('val_bpb'), '.3f')}"
                            for name, f in sources.items()) + ")"


class MetricsLog:
    """``metrics.jsonl`` of a run (rank 0): rewritten up to `resume_step` on resume, then appended.

    `trackers` (`train.tracking`) get every record written, and are closed with the log."""

    def __init__(self, run: RunFolder, resume_step: int | None, trackers: Sequence = ()):
        self.trackers = list(trackers)
        self.path = run.metrics
        self.plot_path = run.plot
        run.path.mkdir(parents=True, exist_ok=True)
        self.records = [r for r in read_records(self.path) if r.get("step", math.inf) <= resume_step] \
            if resume_step is not None else []
        with atomic_file(self.path) as tmp:
            tmp.write_text("".join(strict_json(r) + "\n" for r in self.records), "utf-8")
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(strict_json(record) + "\n")
        self.file.flush()
        for tracker in self.trackers:
            tracker.log(record)

    def close(self) -> None:
        self.file.close()
        for tracker in self.trackers:
            tracker.close()

    def plot(self) -> None:
        """Train loss (raw and smoothed) and val loss (and each folder's, for a mixture) against step, to ``loss.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["loss"]) for r in self.records if "loss" in r and math.isfinite(r["loss"])]
        val = [(r["step"], r["val_loss"]) for r in self.records if "val_loss" in r]
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        if train:
            steps, losses = zip(*train, strict=True)
            ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train")
            ax.plot(steps, _ema(losses), color="tab:blue", linewidth=1.5, label="train (smoothed)")
        if val:
            steps, losses = zip(*val, strict=True)
            mixed = any("sources" in r for r in self.records)
            ax.plot(steps, losses, "o-", color="tab:orange", linewidth=1.5, markersize=3,
                    label="val (weighted mean)" if mixed else "val")
        for i, (name, points) in enumerate(_source_curves(self.records).items()):
            steps, losses = zip(*points, strict=True)  # colours C2.. : C0 and C1 are train and val
            ax.plot(steps, losses, "s--", color=f"C{2 + i % 8}", linewidth=1, markersize=2.5, label=f"val {name}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per target token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        try:
            with atomic_file(self.plot_path) as tmp:
                fig.savefig(tmp, format="png")
        finally:
            plt.close(fig)


def _source_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Each folder's (step, val loss) points, in the order the folders first appear."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for name, figures in (r.get("sources") or {}).items():
            loss = figures.get("val_loss") if isinstance(figures, dict) else None
            if isinstance(loss, (int, float)) and math.isfinite(loss):
                curves.setdefault(name, []).append((r["step"], loss))
    return curves


def _ema(values, alpha: float = 0.1) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else (1 - alpha) * avg + alpha * v
        out.append(avg)
    return out


class LiveView:
    """A rich progress line: step, loss, lr, tokens/s, MFU, elapsed and ETA (rank 0 only)."""

    def __init__(self, total: int, start: int, enabled: bool, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s  "
                       "MFU {task.fields[mfu]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", lr="-", tps="-",
                                           mfu="-")
        self.started = time.perf_counter()

    def __enter__(self) -> LiveView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, rec: dict) -> None:
        mfu = "n/a" if rec["mfu"] is None else f"{100 * rec['mfu']:.1f}%"
        self.progress.update(self.task, completed=rec["step"], loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                             tps=f"{rec['tokens_per_s']:,.0f}", mfu=mfu)

    def print(self, *args, **kwargs) -> None:
        if self.enabled:
            self.progress.console.print(*args, **kwargs)
