"""``python -m model harness|bpb``: how good is a model, measured the way the field measures it.

`harness` runs lm-evaluation-harness tasks (C-Eval, CMMLU, ...) on a checkpoint (`model.measure.harness`);
`bpb` scores any causal LM, ours or a Hugging Face folder, in bits per byte of the same raw text
(`model.measure.bpb`). Tables go to stdout, progress and notes to stderr; errors a user can fix are one line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click
from rich import progress as rp
from rich.console import Console
from rich.table import Table

from common.cli import FiniteFloat, UserPath, one_line_errors
from common.outputs import atomic_file, check_replaceable_file, json_with_keys, write_json_atomic
from model.cli_common import device_option, dtype_option, scoring_options
from model.io import CheckpointError, is_chat
from model.measure.bpb import bits_per_byte, load_scored_model
from model.measure.harness import (
    chance_levels,
    default_out,
    results_document,
    run_harness,
    table_rows,
)
from model.measure.texts import total_raw_bytes

err = Console(stderr=True, highlight=False, soft_wrap=True)
MAX_BATCH = 4096  # sequences per forward pass: more is a typo, and would be allocated before it failed


@click.command()
@click.option("--ckpt", type=UserPath(), default=Path("runs/sft"), show_default=True,
              help="run folder or its checkpoint/ folder")
@click.option("--tasks", default="ceval-valid,cmmlu", show_default=True,
              help="lm-eval task or group names, comma-separated")
@click.option("--limit", type=FiniteFloat(0, 1e9, min_open=True), default=None,
              help="at most N documents per task (a fraction if < 1): for trying out")
@click.option("--num-fewshot", type=click.IntRange(0, 1000), default=None, help="few-shot examples [default: the task's, else 0]")
@click.option("--apply-chat-template", is_flag=True, help="render prompts as ChatML turns (for SFT models)")
@click.option("--fewshot-as-multiturn", is_flag=True, help="with --apply-chat-template: one turn per few-shot example")
@click.option("--include-path", "include_paths", multiple=True, type=UserPath(),
              help="folder of your own lm-eval task YAMLs (repeatable)")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True,
              help="sequences per forward pass")
@device_option
@dtype_option()
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1234, show_default=True,
              help="lm-eval's seeds (few-shot sampling)")
@click.option("--bootstrap-iters", type=click.IntRange(0, 10**7), default=100_000, show_default=True,
              help="bootstrap resamples for the standard errors of non-mean metrics (0 = none)")
@click.option("--subtasks", is_flag=True, help="show every subtask (C-Eval subject) in the table, not only the names asked for")
@click.option("--out", type=UserPath(), default=None,
              help="results JSON [default: RUN/harness/TASKS_TIME.json]")
@click.option("--log-samples", is_flag=True, help="also write every prompt and answer to OUT.samples.jsonl")
@one_line_errors
def harness(ckpt: Path, tasks: str, include_paths: tuple[Path, ...], subtasks: bool, out: Path | None,
            log_samples: bool, **kw) -> None:
    """Run lm-evaluation-harness tasks (default C-Eval valid + CMMLU) on a checkpoint.

    Prints each metric with its standard error and chance level, and writes lm-eval's full results
    (version, task configs, prompt hashes) under the run folder. Real tasks fetch their datasets
    from the Hugging Face hub once; offline, they fail at once unless already cached.
    """
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise click.UsageError("--tasks is empty")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its INFO and WARNING lines would bury the table
    t0 = time.perf_counter()
    try:
        out = out or default_out(ckpt, names)
        check_replaceable_file(out, json_with_keys("zh_mini_llm", "results"), "harness result")  # before the run
        results = run_harness(ckpt, names, include_paths=list(include_paths), console=err, **kw)
    except CheckpointError as e:
        hint = "; train one first (make pretrain, make sft) or pass --ckpt" if not ckpt.exists() else ""
        raise CheckpointError(f"{e}{hint}") from None
    chance = chance_levels(results)
    run_info = {"checkpoint": str(ckpt), "tasks": names, "argv": sys.argv[1:],
                "seconds": round(time.perf_counter() - t0, 1), **kw}
    print_harness_table(results, chance, None if subtasks else names, Console())  # first: a failed write keeps it
    _print_notes(results.get("config", {}), kw["apply_chat_template"])
    from lm_eval.utils import handle_non_serializable

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, results_document(results, chance, run_info), default=handle_non_serializable)
    if log_samples:
        _write_samples(out.with_suffix(".samples.jsonl"), results["samples"], handle_non_serializable)
    err.print(f"[dim]{time.perf_counter() - t0:.0f}s; lm-eval {results.get('lm_eval_version')}; wrote {out}[/]")


def _print_notes(config: dict, chat_template: bool) -> None:
    if config.get("requests_cut_to_context"):
        err.print(f"[yellow]{config['requests_cut_to_context']:,} prompts were longer than the model's context and were "
                  "cut from the left (as lm-eval does for every model): fewer few-shot examples may score better[/]")
    if is_chat(config) and not chat_template:
        err.print("[yellow]this is a chat model: --apply-chat-template scores it with the ChatML prompts it was "
                  "fine-tuned on[/]")


def _write_samples(path: Path, samples: dict, default) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for task, rows in samples.items():
            for row in rows:
                f.write(json.dumps({"task": task, **row}, ensure_ascii=False, default=default) + "\n")


def print_harness_table(results: dict, chance: dict, only: list[str] | None, console: Console) -> None:
    step = results.get("config", {}).get("step")
    table = Table(title=f"{results.get('config', {}).get('checkpoint')} (step {step})")
    for name, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("± stderr", "right"),
                          ("chance", "right"), ("n", "right")):
        table.add_column(name, justify=justify)
    n_samples = results.get("n-samples", {})
    for task, metric, value, stderr, level in table_rows(results, chance, only):
        n = n_samples.get(task, {}).get("effective")
        table.add_row(task, metric, f"{value:.4f}", "" if stderr is None else f"{stderr:.4f}",
                      "" if level is None else f"{level:.4f}", "" if n is None else f"{n:,}")
    console.print(table)


@click.command()
@click.option("--model", "models", type=UserPath(), required=True, multiple=True,
              help="our run / checkpoint folder, or a local Hugging Face model folder (repeat to compare)")
@click.option("--text", type=UserPath(), required=True,
              help='a text file, a folder of them, or JSON lines with {"text": ...} (e.g. a wiki_zh shard)')
@click.option("--context", type=click.IntRange(1, 1 << 20), default=None,
              help="tokens per window [default: the model's context; at most 2048 for Hugging Face models]")
@click.option("--stride", type=click.IntRange(1, 1 << 20), default=None,
              help="tokens between window starts [default: half the context]")
@scoring_options(8, MAX_BATCH, "windows per forward pass",
                 "also write the figures to this JSON file (a list, one entry per model)")
@one_line_errors
def bpb(models: tuple[Path, ...], text: Path, context: int | None, stride: int | None, batch_size: int, device: str,
        dtype: str, out: Path | None) -> None:
    """Bits per byte (and loss per token) of models on the same raw text: comparable across tokenizers."""
    results = []
    if out:  # found out now, not after scoring; never over a file that is not a bpb result
        check_replaceable_file(out, json_with_keys("model", "bits_per_byte"), "bpb result")
    total = total_raw_bytes(text)
    for path in models:
        t0 = time.perf_counter()
        scored = load_scored_model(path, device, dtype)
        columns = (rp.TextColumn(f"[bold]{path}[/]"), rp.BarColumn(), rp.DownloadColumn(), rp.TransferSpeedColumn(),
                   rp.TimeRemainingColumn())
        with rp.Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task("bpb", total=total)
            result = bits_per_byte(scored, text, context, stride, batch_size,
                                   progress=lambda n, task=task, progress=progress: progress.advance(task, n))
        results.append({**result, "seconds": round(time.perf_counter() - t0, 2)})
        del scored
    print_bpb_table(results, text, Console())
    for r in results:
        if r["unscored_tokens"]:
            err.print(f"[yellow]{r['model']}: {r['unscored_tokens']} first tokens were not scored: the model has no "
                      "BOS/EOS token to predict them from[/]")
    if out:
        write_json_atomic(out, results)
        err.print(f"[dim]wrote {out}[/]")


def print_bpb_table(results: list[dict], text: Path, console: Console) -> None:
    """One column per model, one row per figure: narrow enough for any terminal with one or two models."""
    table = Table(title=f"on {text}")
    table.add_column("")
    for r in results:
        table.add_column(f"{r['model']}\n({r['kind']})", justify="right")
    figures = (("bits per byte", "{bits_per_byte:.4f}"), ("loss per token (nats)", "{loss_per_token:.4f}"),
               ("tokens scored", "{tokens:,}"), ("UTF-8 bytes", "{bytes:,}"), ("bytes per token", "{bytes_per_token:.2f}"),
               ("documents", "{documents:,}"), ("context / stride", "{context} / {stride}"), ("seconds", "{seconds}"))
    for name, fmt in figures:
        table.add_row(name, *(fmt.format(**r) for r in results))
    console.print(table)
