"""``python -m model select|teach``: a bigger model of Qwen2's vocabulary as teacher (`model.teach`).

Both read a token folder (never changing it) and write a new one; both are resumable (rerun the same
command after an interruption). Notes and summaries go to stderr; errors a user can fix are one line.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from common.cli import FiniteFloat, UserPath, one_line_errors
from model.cli_common import console, device_option, dtype_option
from model.teach.capture import DEFAULT_K, TeachOptions, teach_summary
from model.teach.capture import teach as run_teach
from model.teach.select import select as run_select
from model.teach.select import selection_summary
from prep.tokenfile import SPLITS, open_token_folder
from prep.tokenizer import recorded_tokenizer

TEACHER_HELP = "teacher: a run of this project, a Hugging Face folder, or a hub name (Qwen/Qwen2.5-0.5B)"


def context_option(f):
    return click.option("--context", type=click.IntRange(2, 1 << 20), default=None,
                        help="tokens per window [default: the model's context, at most 1,024]")(f)


@click.command()
@click.option("--data", type=UserPath(exists=False), required=True, help="the token folder to select from (pretraining)")
@click.option("--out", type=UserPath(), required=True, help="the new token folder of kept documents")
@click.option("--teacher", default=None, help=TEACHER_HELP)
@click.option("--ref", default=None, help="reference model (small): a run of this project or any Hugging Face causal LM")
@click.option("--keep", type=FiniteFloat(0, 1, min_open=True), default=0.5, show_default=True,
              help="share of the documents to keep (the highest teacher-minus-reference scores)")
@click.option("--scores", "scores_from", type=UserPath(), default=None,
              help="reuse the scores of an earlier selection of the same folder (no model is run)")
@click.option("--split", "splits", type=click.Choice(SPLITS), multiple=True, default=("train",), show_default=True,
              help="splits to select from (others are copied whole); repeatable")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=8, show_default=True, help="windows per forward pass")
@context_option
@device_option
@dtype_option()
@one_line_errors
def select(data: Path, out: Path, teacher: str | None, ref: str | None, keep: float, scores_from: Path | None,
           splits: tuple[str, ...], batch_size: int, context: int | None, device: str, dtype: str) -> None:
    """Keep the documents a teacher finds easy and a small reference model hard (MiniPLM difference sampling)."""
    t0 = time.perf_counter()
    meta, scores = run_select(data, out, keep, teacher, ref, scores_from, splits, batch_size, context, device, dtype,
                              console)
    source = open_token_folder(data)
    tok = recorded_tokenizer(source.tokenizer, str(source.path))
    for line in selection_summary(scores, out, tok, source, keep):
        console.print(line, markup=False)
    sel = meta["selection"]
    kept = ", ".join(f"{name} {k:,} of {sel['source_docs'][name]:,}" for name, k in sel["kept_docs"].items())
    console.print(f"kept {kept} documents in {time.perf_counter() - t0:,.1f} s", markup=False)


@click.command()
@click.option("--data", type=UserPath(), required=True, help="the token folder (pretraining or SFT)")
@click.option("--teacher", required=True, help=TEACHER_HELP)
@click.option("--out", type=UserPath(), required=True, help="the new token folder: the tokens and the teacher's targets")
@click.option("--k", "k", type=click.IntRange(1, 255), default=DEFAULT_K, show_default=True,
              help="samples drawn from the teacher per token (5·K bytes per token stored)")
@click.option("--temperature", type=FiniteFloat(0, 100, min_open=True), default=1.0, show_default=True,
              help="teacher temperature while sampling")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--batch-tokens", type=click.IntRange(1, 1 << 24), default=2048, show_default=True,
              help="padded tokens per teacher forward pass (its logits are this x vocabulary fp32)")
@context_option
@device_option
@dtype_option()
@one_line_errors
def teach(data: Path, teacher: str, out: Path, k: int, temperature: float, seed: int, batch_tokens: int,
          context: int | None, device: str, dtype: str) -> None:
    """Store a teacher's sparse targets (K sampled ids with counts) beside every trained token."""
    t0 = time.perf_counter()
    opts = TeachOptions(k=k, temperature=temperature, seed=seed, context=context, batch_tokens=batch_tokens)
    meta = run_teach(data, teacher, out, opts, device, dtype, console)
    for line in teach_summary(meta, out):
        console.print(line, markup=False)
    console.print(f"done in {time.perf_counter() - t0:,.1f} s", markup=False)
