"""``python -m train report RUN [RUN ...]``: how did a run go, and where are its files?

Reads only what a run folder already holds (``metrics.jsonl``, ``checkpoint/``), so it works on a
finished run, on one still training, and on one copied from a GPU machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import click
from rich.console import Console
from rich.table import Table

from common.cli import UserPath, one_line_errors
from model.archs import config_from_dict
from model.identity import identity_changes
from model.io import CheckpointError, RunFolder, is_chat, read_model_info, resolve_model_dir
from train.checkpoint import read_run_info
from train.metrics import read_records
from train.stages import STAGES


def read_metrics(run: RunFolder) -> tuple[list[dict], list[dict]]:
    """Train lines and eval lines of the run's metrics file (a torn last line is ignored)."""
    records = read_records(run.metrics)
    return [r for r in records if "val_loss" not in r], [r for r in records if "val_loss" in r]


def summarize(path: Path) -> dict:
    """The figures `report` prints for one run (a run folder or its checkpoint folder).

    ``val_sources`` holds the same first / last / best figures for each folder of a mixture."""
    run = RunFolder.of(path)
    info = read_model_info(path)
    chain = lineage(path)
    train, evals = read_metrics(run)
    names = dict.fromkeys(name for e in evals for name in (e.get("sources") or {}))
    by_source = {name: [{"step": e.get("step"), **(e.get("sources") or {}).get(name, {})} for e in evals]
                 for name in names}
    return {
        "kind": f"{'chat' if is_chat(info) else 'base'} model ({chain[-1].stage})",
        "lineage": chain,
        "val_metrics": _stage_metrics(chain[-1].stage, evals),
        "step": info.get("step"),
        "shape": "{n_layer}x{n_embd}, block {block_size}, vocab {vocab_size}".format(
            **config_from_dict(info["config"]).to_dict()),  # any architecture: gpt2 when unrecorded
        **_curve(evals),
        "val_sources": {name: _curve(points) for name, points in by_source.items()},
        "train_last": train[-1].get("loss") if train else None,
        "files": {"checkpoint": run.checkpoint, "metrics": run.metrics, "plot": run.plot},
    }


class Ancestor(NamedTuple):
    """One run of a lineage: its folder, its stage, and what changed at that path since the child began
    (empty: the true parent; otherwise another run now sits where the parent was)."""

    path: str
    stage: str
    replaced: tuple[str, ...] = ()

    def describe(self) -> str:
        gone = f"; replaced since: {', '.join(self.replaced)}" if self.replaced else ""
        return f"{self.stage} ({self.path}{gone})"


def lineage(path: Path, longest: int = 8) -> list[Ancestor]:
    """The runs from the first of a lineage to `path`, following each run's --init as recorded in its
    train_config.json. A child that recorded its parent's identity (`model.identity`) is checked
    against what now sits at that path: a parent retrained or removed since is shown as replaced, and
    the lineage ends there (the run now at that path is not an ancestor). A run whose record cannot be
    read ends it with its model.json's data kind as the stage ("?" when there is none)."""
    chain: list[Ancestor] = []
    current: Path | None = Path(path)
    while current is not None and len(chain) < longest:
        try:
            info = read_run_info(resolve_model_dir(current))
        except (CheckpointError, OSError):  # no train_config.json: its model.json's data kind says the stage
            chain.append(Ancestor(str(RunFolder.of(current).path), _stage_of_data(current)))
            break
        chain.append(Ancestor(str(RunFolder.of(current).path), str(info.get("stage", "?"))))
        current = Path(info["init"]) if isinstance(info.get("init"), str) else None
        recorded = info.get("init_identity")
        if current is not None and isinstance(recorded, dict):
            changes = identity_changes(recorded, current)
            if changes:
                chain.append(Ancestor(str(RunFolder.of(current).path), "replaced parent", tuple(changes)))
                break
    return chain[::-1]


def _stage_of_data(path: Path) -> str:
    """The first registered stage that trains on the checkpoint's data kind (runs without train_config.json)."""
    try:
        kind = read_model_info(path).get("data_kind")
    except (CheckpointError, OSError):
        return "?"
    return next((stage.name for stage in STAGES.values() if stage.data_kind == kind), "?")


def _stage_metrics(stage: str, evals: list[dict]) -> dict[str, float]:
    """The last eval's value of each val metric the run's stage shows in reports (dpo: reward accuracy)."""
    names = STAGES[stage].report_metrics if stage in STAGES else ()
    return {name: next(e[f"val_{name}"] for e in reversed(evals) if f"val_{name}" in e)
            for name in names if any(f"val_{name}" in e for e in evals)}


def _curve(evals: list[dict]) -> dict:
    """First, last and best (step, val_loss[, val_bpb]) of eval records (those with a val_loss)."""
    evals = [e for e in evals if isinstance(e.get("val_loss"), (int, float))]
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    best = min(evals, key=lambda r: r["val_loss"]) if evals else {}
    return {"val_first": (first.get("step"), first.get("val_loss")),
            "val_last": (last.get("step"), last.get("val_loss"), last.get("val_bpb")),
            "val_best": (best.get("step"), best.get("val_loss"))}


def _loss(step_and_loss: tuple) -> str:
    step, loss = step_and_loss[:2]
    return "-" if loss is None else f"{loss:.3f} (step {step})"


def _val_row(curve: dict) -> str:
    return f"{_loss(curve['val_first'])} -> {_loss(curve['val_last'])}, best {_loss(curve['val_best'])}"


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=UserPath())
@click.option("--lineage", "show_lineage", is_flag=True,
              help="also every run each RUN started from (its --init, and theirs); a parent replaced since is named")
@one_line_errors
def report_command(runs: tuple[Path, ...], show_lineage: bool) -> None:
    """Summarise run folders: model, steps, validation loss first / best / last, and their files."""
    console = Console()
    for run in runs:  # a missing path or a token folder is one line, with or without --lineage
        read_model_info(run)
    if show_lineage:  # every true ancestor once; a replaced parent is named in its child's lineage row
        runs = tuple(dict.fromkeys(Path(a.path) for run in runs for a in lineage(run)
                                   if a.stage != "?" and not a.replaced))
    for run in runs:
        s = summarize(run)
        table = Table(title=f"{run}: {s['kind']}", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        table.add_row("model", f"{s['shape']}, step {s['step']}")
        if len(s["lineage"]) > 1:
            table.add_row("lineage", " -> ".join(a.describe() for a in s["lineage"]))
        mixed = " (weighted)" if s["val_sources"] else ""
        table.add_row(f"val loss{mixed}", _val_row(s))
        if s["val_last"][2] is not None:
            table.add_row(f"val bits/byte{mixed}", f"{s['val_last'][2]:.3f}")
        for name, curve in s["val_sources"].items():
            bpb = curve["val_last"][2]
            table.add_row(f"  {name}", _val_row(curve) + ("" if bpb is None else f"; {bpb:.3f} bits/byte"))
        for name, value in s["val_metrics"].items():
            table.add_row(f"val {name.replace('_acc', ' accuracy').replace('_', ' ')}", f"{value:.3f} (last eval)")
        if s["train_last"] is not None:
            table.add_row("train loss", f"{s['train_last']:.3f} (last step)")
        for name, path in s["files"].items():
            table.add_row(name, str(path) if path.exists() else f"{path} (missing)")
        console.print(table)
