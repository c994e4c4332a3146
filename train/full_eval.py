"""``python -m train eval``: loss, perplexity and bits per byte of a checkpoint over a WHOLE split.

The split is cut into non-overlapping blocks of the model's block size (`train.data.tiling_starts`),
so every token from the second on is predicted exactly once, in a fixed order: the figures are
deterministic and comparable between checkpoints. The loss is the trainer's own
(`train.evaluate.evaluate_windows`): for SFT data only the trained tokens (assistant replies and
their ``<|im_end|>``) count, and bits per byte use the split's target tokens and bytes from
``meta.json`` (all tokens and bytes for pretraining data). A block predicts its first tokens from
little context, so these losses sit a little above those of a sliding-window evaluation.

``--data`` may be a mixture (`train.mixture`: ``wiki:0.3,web:0.7``): each folder is evaluated whole,
and the mixture's loss and bits per byte are the weight-averaged per-folder figures, as in training.
The JSON then has the same top-level figures plus ``sources``: each folder's.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from common.cli import UserPath, one_line_errors
from common.outputs import check_replaceable_file, json_with_keys, write_json_atomic
from model.cli_common import scoring_options
from model.io import RunFolder, read_model_info, resolve_model_dir
from model.loader import load_on_device
from prep.tokenfile import Split, TokenFileError
from prep.tokenizer import check_identity
from train.data import tiling_starts
from train.evaluate import bits_per_byte, evaluate_windows
from train.mixture import mixture_figures, open_mixture


def evaluate_checkpoint(ckpt: str | os.PathLike, data: str | os.PathLike, split: str = "val", batch_size: int = 16,
                        device: str = "auto", dtype: str = "auto", console: Console | None = None) -> dict:
    """Evaluate `ckpt` on every block of `split` of the token folder (or each folder of the mixture) `data`."""
    mixture = open_mixture(data)
    info = read_model_info(ckpt)
    check_identity(info["tokenizer"], mixture.tokenizer, str(resolve_model_dir(ckpt)), f"the data ({data})")
    model, info, prec = load_on_device(ckpt, device, dtype)
    T = model.config.block_size
    splits = [source.split(split) for source in mixture.sources]
    starts = [tiling_starts(sp, T) for sp in splits]
    for source, sp, st in zip(mixture.sources, splits, starts, strict=True):
        if not len(st):
            raise TokenFileError(f"{source.path}: split {split!r} has {sp.n_tokens} tokens; at least 2 are needed")
    sums = _evaluate_splits(model, splits, starts, batch_size, prec.autocast, console)
    figures = []
    for source, sp, st, (loss_sum, count) in zip(mixture.sources, splits, starts, sums, strict=True):
        if count == 0:
            raise TokenFileError(f"{source.path}: split {split!r} has no trained (masked) tokens to evaluate")
        figures.append(_figures(loss_sum / count, count, sp, len(st)))
    result = {"checkpoint": str(ckpt), "step": info.get("step"), "data": str(data), "data_kind": mixture.kind,
              "split": split, "block_size": T}
    if len(figures) == 1:
        return result | figures[0]
    loss, bpb = mixture_figures([f["loss"] for f in figures], [f["bits_per_byte"] for f in figures], mixture.weights)
    return result | _figures(loss, sum(f["target_tokens"] for f in figures), None, sum(map(len, starts)), bpb) | {
        "sources": {s.name: {"path": str(s.path), "weight": s.weight, **f}
                    for s, f in zip(mixture.sources, figures, strict=True)}}


def _figures(loss: float, count: float, split: Split | None, blocks: int, bpb: float | None = None) -> dict:
    return {"blocks": int(blocks), "target_tokens": int(count), "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else None,  # None: too large for a float
            "bits_per_byte": bits_per_byte(loss, split) if split is not None else bpb}


def _evaluate_splits(model, splits: list[Split], starts: list, batch_size: int, autocast,
                     console: Console | None) -> list[tuple[float, float]]:
    """``(loss_sum, n_targets)`` of each split over its blocks, with one progress bar for them all."""
    dev = next(model.parameters()).device
    T = model.config.block_size
    columns = (TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks, {task.fields[rate]}"),
               TimeRemainingColumn())
    sums = []
    with Progress(*columns, console=console or Console(stderr=True), transient=True,
                  disable=console is None) as progress:
        task = progress.add_task("eval", total=sum(map(len, starts)), rate="")
        t0, done = time.perf_counter(), 0
        for sp, st in zip(splits, starts, strict=True):
            loss_sum = count = 0.0
            for i in range(0, len(st), batch_size):
                chunk = st[i : i + batch_size]
                s, n = evaluate_windows(model, sp, chunk, T, batch_size, dev, autocast)
                loss_sum, count, done = loss_sum + s, count + n, done + len(chunk)
                progress.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):.1f}/s")
            sums.append((loss_sum, count))
    return sums


def print_table(result: dict, console: Console) -> None:
    """One row for a folder; for a mixture a row per folder and the mixture's (weight-averaged)."""
    table = Table(title=f"{result['checkpoint']} (step {result['step']}) on {result['data']} [{result['split']}]")
    sources = result.get("sources")
    if sources:
        table.add_column("data")
        table.add_column("weight", justify="right")
    table.caption = "loss: mean nats per target token"
    for name in ("loss", "perplexity", "bits/byte", "target tokens", "blocks"):
        table.add_column(name, justify="right")
    rows = [([name, f"{f['weight']:.3g}"], f) for name, f in sources.items()] + [(["weighted", "1"], result)] \
        if sources else [([], result)]
    for head, f in rows:
        bpb, ppl = f["bits_per_byte"], f["perplexity"]
        table.add_row(*head, f"{f['loss']:.4f}", "inf" if ppl is None else f"{ppl:.2f}",
                      "n/a" if bpb is None else f"{bpb:.4f}", f"{f['target_tokens']:,}",
                      f"{f['blocks']:,} x {result['block_size']}")
    console.print(table)


@click.command("eval")
@click.option("--ckpt", type=UserPath(), required=True, help="run folder or its checkpoint/ folder")
@click.option("--data", required=True,
              help="token folder (prep output), or a mixture FOLDER:0.3,FOLDER:0.7: each folder is reported")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@scoring_options(16, 4096, "blocks per forward pass (at most 4096: more is a typo, allocated before it failed)",
                 "JSON file to write [default: RUN/eval_DATANAME_SPLIT.json]")
@one_line_errors
def eval_command(ckpt: Path, data: str, split: str, batch_size: int, device: str, dtype: str, out: Path | None) -> None:
    """Loss, perplexity and bits per byte of a checkpoint over a whole split (non-overlapping blocks)."""
    err = Console(stderr=True)
    out = out or RunFolder.of(resolve_model_dir(ckpt)).eval_result(open_mixture(data).label, split)
    # found out now, not after evaluating the whole split; never over a file that is not an eval result
    check_replaceable_file(out, json_with_keys("checkpoint", "split", "loss"), "eval result")
    result = evaluate_checkpoint(ckpt, data, split, batch_size, device, dtype, console=err)
    print_table(result, Console())
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    err.print(f"wrote {out}")
