"""What a run reports: ``OUT/metrics.jsonl``, ``OUT/loss.png`` and the live view in the terminal.

``metrics.jsonl`` holds one strict JSON object per line (a non-finite value is written as null): train
lines ``{"step", "loss", "lr", "tokens_per_s", "mfu", "grad_norm"}`` and eval lines ``{"step",
"val_loss", "val_bpb"}``. On resume, lines after the checkpoint's step (written by the interrupted
run, and about to be redone) are dropped, so the file reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from model.io import RunFolder
from prep.outputs import atomic_file, json_safe


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
                records.append({k: v for k, v in rec.items() if k in ("step", "sources") or _is_figure(v)})
    return records


def _is_figure(value: object) -> bool:
    """A value a metrics record may hold (a hand-edited "1.2" or true is dropped, not trusted)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def strict_json(record: dict) -> str:
    """One JSON line; a non-finite number becomes null, so every reader can parse the file."""
    return json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False)


class MetricsLog:
    """``metrics.jsonl`` of a run (rank 0): rewritten up to `resume_step` on resume, then appended."""

    def __init__(self, run: RunFolder, resume_step: int | None):
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

    def close(self) -> None:
        self.file.close()

    def plot(self) -> None:
        """Train loss (raw and smoothed) and val loss against step, to ``loss.png``."""
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
            ax.plot(steps, losses, "o-", color="tab:orange", linewidth=1.5, markersize=3, label="val")
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
