"""``python -m train report RUN [RUN ...]``: how did a run go, and where are its files?

Reads only what a run folder already holds (``metrics.jsonl``, ``checkpoint/``), so it works on a
finished run, on one still training, and on one copied from a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from model.gpt import GPTConfig
from model.io import CheckpointError, RunFolder, is_chat, read_model_info
from prep.cli_common import one_line_errors
from train.metrics import read_records


def read_metrics(run: RunFolder) -> tuple[list[dict], list[dict]]:
    """Train lines and eval lines of the run's metrics file (a torn last line is ignored)."""
    records = read_records(run.metrics)
    return [r for r in records if "val_loss" not in r], [r for r in records if "val_loss" in r]


def summarize(path: Path) -> dict:
    """The figures `report` prints for one run (a run folder or its checkpoint folder)."""
    run = RunFolder.of(path)
    info = read_model_info(path)
    train, evals = read_metrics(run)
    evals = [e for e in evals if e.get("val_loss") is not None]
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    best = min(evals, key=lambda r: r["val_loss"]) if evals else {}
    return {
        "kind": "chat model (sft)" if is_chat(info) else "base model (pretrain)",
        "step": info.get("step"),
        "shape": "{n_layer}x{n_embd}, block {block_size}, vocab {vocab_size}".format(
            **GPTConfig.from_dict(info["config"]).to_dict()),
        "val_first": (first.get("step"), first.get("val_loss")),
        "val_last": (last.get("step"), last.get("val_loss"), last.get("val_bpb")),
        "val_best": (best.get("step"), best.get("val_loss")),
        "train_last": train[-1].get("loss") if train else None,
        "files": {"checkpoint": run.checkpoint, "metrics": run.metrics, "plot": run.plot},
    }


def _loss(step_and_loss: tuple) -> str:
    step, loss = step_and_loss[:2]
    return "-" if loss is None else f"{loss:.3f} (step {step})"


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@one_line_errors(CheckpointError)
def report_command(runs: tuple[Path, ...]) -> None:
    """Summarise run folders: model, steps, validation loss first / best / last, and their files."""
    console = Console()
    for run in runs:
        s = summarize(run)
        table = Table(title=f"{run}: {s['kind']}", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        table.add_row("model", f"{s['shape']}, step {s['step']}")
        table.add_row("val loss", f"{_loss(s['val_first'])} -> {_loss(s['val_last'])}, best {_loss(s['val_best'])}")
        if s["val_last"][2] is not None:
            table.add_row("val bits/byte", f"{s['val_last'][2]:.3f}")
        if s["train_last"] is not None:
            table.add_row("train loss", f"{s['train_last']:.3f} (last step)")
        for name, path in s["files"].items():
            table.add_row(name, str(path) if path.exists() else f"{path} (missing)")
        console.print(table)
