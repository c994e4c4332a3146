"""``python -m train eval``: loss, perplexity and bits per byte of a checkpoint over a WHOLE split.

The split is cut into non-overlapping blocks of the model's block size (`train.data.tiling_starts`),
so every token from the second on is predicted exactly once, in a fixed order: the figures are
deterministic and comparable between checkpoints. The loss is the trainer's own
(`train.evaluate.evaluate_windows`): for SFT data only the trained tokens (assistant replies and
their ``<|im_end|>``) count, and bits per byte use the split's target tokens and bytes from
``meta.json`` (all tokens and bytes for pretraining data). A block predicts its first tokens from
little context, so these losses sit a little above those of a sliding-window evaluation.
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

from model.cli_common import device_option, dtype_option
from model.io import CheckpointError, RunFolder, read_model_info, resolve_model_dir
from model.loader import load_on_device
from model.runtime import RuntimeChoiceError
from prep.cli_common import one_line_errors
from prep.outputs import OutputError, check_replaceable_file, json_with_keys, write_json_atomic
from prep.tokenfile import TokenFileError, open_token_folder
from prep.tokenizer import TokenizerError, check_identity
from train.data import tiling_starts
from train.evaluate import bits_per_byte, evaluate_windows


def evaluate_checkpoint(ckpt: str | os.PathLike, data: str | os.PathLike, split: str = "val", batch_size: int = 16,
                        device: str = "auto", dtype: str = "auto", console: Console | None = None) -> dict:
    """Evaluate `ckpt` on every block of `split` of the token folder `data`; returns the figures."""
    folder = open_token_folder(data)
    info = read_model_info(ckpt)
    check_identity(info["tokenizer"], folder.tokenizer, str(resolve_model_dir(ckpt)), f"the data ({data})")
    model, info, prec = load_on_device(ckpt, device, dtype)
    autocast = prec.autocast
    dev = next(model.parameters()).device
    sp = folder.split(split)
    T = model.config.block_size
    starts = tiling_starts(sp, T)
    if not len(starts):
        raise TokenFileError(f"{data}: split {split!r} has {sp.n_tokens} tokens; at least 2 are needed")
    loss_sum = count = 0.0
    columns = (TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks, {task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True,
                  disable=console is None) as progress:
        task = progress.add_task("eval", total=len(starts), rate="")
        t0 = time.perf_counter()
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            s, n = evaluate_windows(model, sp, chunk, T, batch_size, dev, autocast)
            loss_sum, count = loss_sum + s, count + n
            done = i + len(chunk)
            progress.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):.1f}/s")
    if count == 0:
        raise TokenFileError(f"{data}: split {split!r} has no trained (masked) tokens to evaluate")
    loss = loss_sum / count
    return {
        "checkpoint": str(ckpt),
        "step": info.get("step"),
        "data": str(data),
        "data_kind": folder.kind,
        "split": split,
        "block_size": T,
        "blocks": int(len(starts)),
        "target_tokens": int(count),
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else None,  # None: too large for a float
        "bits_per_byte": bits_per_byte(loss, sp),
    }


def print_table(result: dict, console: Console) -> None:
    table = Table(title=f"{result['checkpoint']} (step {result['step']}) on {result['data']} [{result['split']}]")
    for name in ("loss (nats/token)", "perplexity", "bits per byte", "target tokens", "blocks"):
        table.add_column(name, justify="right")
    bpb = result["bits_per_byte"]
    ppl = result["perplexity"]
    table.add_row(f"{result['loss']:.4f}", "inf" if ppl is None else f"{ppl:.2f}", "n/a" if bpb is None else f"{bpb:.4f}",
                  f"{result['target_tokens']:,}", f"{result['blocks']:,} x {result['block_size']}")
    console.print(table)


@click.command("eval")
@click.option("--ckpt", type=click.Path(path_type=Path), required=True, help="run folder or its checkpoint/ folder")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="token folder (prep output)")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="blocks per forward pass")
@device_option
@dtype_option()
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON file to write [default: RUN/eval_DATANAME_SPLIT.json]")
@one_line_errors(CheckpointError, TokenFileError, TokenizerError, OutputError, RuntimeChoiceError)
def eval_command(ckpt: Path, data: Path, split: str, batch_size: int, device: str, dtype: str, out: Path | None) -> None:
    """Loss, perplexity and bits per byte of a checkpoint over a whole split (non-overlapping blocks)."""
    err = Console(stderr=True)
    out = out or RunFolder.of(resolve_model_dir(ckpt)).eval_result(data, split)
    # found out now, not after evaluating the whole split; never over a file that is not an eval result
    check_replaceable_file(out, json_with_keys("checkpoint", "split", "loss"), "eval result")
    result = evaluate_checkpoint(ckpt, data, split, batch_size, device, dtype, console=err)
    print_table(result, Console())
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    err.print(f"wrote {out}")
