"""``python -m train pretrain|sft``: thin Click commands over `train.loop.train`.

A preset gives every field; plain options and ``--set key=value`` (repeatable, typed from
`train.config.TrainConfig`) override it. Errors a user can fix are one line and exit non-zero.
"""

from __future__ import annotations

from pathlib import Path

import click

from model.io import CheckpointError
from prep.tokenfile import TokenFileError
from prep.tokenizer import TokenizerError
from train.config import PRESETS, apply_overrides, preset
from train.full_eval import eval_command
from train.loop import RunSpec, TrainError, train
from train.plan import plan_command
from train.report import report_command

USER_ERRORS = (TrainError, TokenFileError, CheckpointError, TokenizerError)


@click.group()
def cli() -> None:
    """Train the GPT: `pretrain` on a token folder from `prep wiki`, then `sft` on one from `prep sft`.

    Run the same command again on the same --out to resume exactly where it stopped. Under
    `torchrun --nproc_per_node N` the same command trains on N processes (DDP).
    """


def run_options(f):
    options = [
        click.option("--preset", default="mini", show_default=True,
                     help=f"field values to start from: {', '.join(PRESETS)} (sft uses NAME-sft)"),
        click.option("--data", required=True, type=click.Path(path_type=Path), help="token folder (prep output)"),
        click.option("--out", required=True, type=click.Path(path_type=Path),
                     help="run folder: checkpoint/, metrics.jsonl, loss.png; resumed if it has a checkpoint"),
        click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                     help="override any config field, e.g. --set lr=3e-4 --set n_layer=6 (repeatable)"),
        click.option("--max-steps", type=int, help="optimizer steps in the whole run (sets the LR schedule)"),
        click.option("--eval-every", type=int, help="steps between evals (val loss, bpb, a sample)"),
        click.option("--ckpt-every", type=int, help="steps between checkpoints"),
        click.option("--seed", type=int, help="seed of the initial weights and the batch order"),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps"),
        click.option("--compile/--no-compile", "compile_", default=None,
                     help="torch.compile the model (default: on for CUDA, off elsewhere)"),
        click.option("--stop-at", type=int,
                     help="checkpoint and exit after this step without changing the schedule (for time-limited jobs)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_config(stage: str, preset_name: str, assignments, **plain):
    """The preset, then plain options, then --set; returns the config and the names set explicitly."""
    items = [f"{k}={v}" for k, v in plain.items() if v is not None] + list(assignments)
    try:
        cfg = apply_overrides(preset(preset_name, stage), items)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    explicit = frozenset(item.partition("=")[0].strip().replace("-", "_") for item in items)
    return cfg, explicit


def run(stage: str, preset_name: str, data: Path, out: Path, init: Path | None, assignments, stop_at, **plain) -> None:
    compile_ = plain.pop("compile_")
    if compile_ is not None:
        plain["compile"] = "on" if compile_ else "off"
    cfg, explicit = build_config(stage, preset_name, assignments, **plain)
    spec = RunSpec(stage, data, out, init, stop_at, explicit)
    try:
        train(cfg, spec)
    except USER_ERRORS as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        raise click.ClickException("aborted by a second Ctrl-C; the last checkpoint in OUT is kept") from None


@cli.command()
@run_options
def pretrain(preset: str, data: Path, out: Path, assignments, stop_at, **plain) -> None:
    """Pretrain from scratch on a `prep wiki` token folder."""
    run("pretrain", preset, data, out, None, assignments, stop_at, **plain)


@cli.command()
@run_options
@click.option("--init", type=click.Path(path_type=Path),
              help="pretraining run (or checkpoint) folder whose weights SFT starts from")
def sft(preset: str, data: Path, out: Path, init: Path | None, assignments, stop_at, **plain) -> None:
    """Fine-tune on a `prep sft` token folder (loss on assistant replies only), starting from --init.

    The model shape comes from --init; the preset NAME means its NAME-sft variant.
    """
    run("sft", preset, data, out, init, assignments, stop_at, **plain)


cli.add_command(eval_command)  # `train eval`: train/full_eval.py
cli.add_command(report_command)  # `train report`: train/report.py
cli.add_command(plan_command)  # `train plan`: train/plan.py
