"""``python -m train pretrain|sft|eval|report``: thin Click commands over `train.trainer.train` and friends.

A preset gives every field; plain options and ``--set key=value`` (repeatable, typed from
`train.config.TrainConfig`) override it. Errors a user can fix are one line and exit non-zero; an
interrupted run exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP) after
saving its checkpoint, so scripts can tell it from a finished one.
"""

from __future__ import annotations

import signal
from pathlib import Path

import click

from common.cli import CommandError, UserPath, one_line_errors
from model.cli_common import device_option, dtype_option
from train.config import PRESETS, apply_overrides, preset
from train.full_eval import eval_command
from train.plan_cli import plan_command
from train.report import report_command
from train.tracking import TRACKERS
from train.trainer import RunSpec, train

DATA_HELP = ("token folder (prep output), or a mixture of several with weights: FOLDER:0.3,FOLDER:0.7 (the part after "
             "the last ':' is a weight when it is a number; a value naming an existing folder is that folder)")


@click.group()
def cli() -> None:
    """Train a model (any architecture: --set arch=...): `pretrain` on a token folder from `prep wiki`, `sft` on one from `prep sft`, then `dpo`
    on one from `prep pref`.

    Run the same command again on the same --out to resume exactly where it stopped. Under
    `torchrun --nproc_per_node N` the same command trains on N processes (DDP).
    """


def run_options(f):
    options = [
        click.option("--preset", default="mini", show_default=True,
                     help=f"field values to start from: {', '.join(PRESETS)} (sft and dpo use NAME-sft, NAME-dpo)"),
        click.option("--data", required=True, help=DATA_HELP),
        click.option("--out", required=True, type=UserPath(),
                     help="run folder: checkpoint/, metrics.jsonl, loss.png; resumed if it has a checkpoint"),
        click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                     help="override any config field, e.g. --set lr=3e-4 --set n_layer=6 (repeatable)"),
        click.option("--max-steps", type=int, help="optimizer steps in the whole run (sets the LR schedule)"),
        click.option("--eval-every", type=int, help="steps between evals (val loss, bpb, a sample)"),
        click.option("--ckpt-every", type=int, help="steps between checkpoints"),
        click.option("--seed", type=int, help="seed of the initial weights and the batch order"),
        device_option,
        dtype_option(default=None, help="the step's precision (default: the preset's, auto: bf16 on GPUs that have "
                     "it, fp16 on older ones, fp32 on a CPU); the same as --set dtype=..."),
        click.option("--compile/--no-compile", "compile_", default=None,
                     help="torch.compile the model (default: on for CUDA, off elsewhere)"),
        click.option("--stop-at", type=click.IntRange(min=1),
                     help="checkpoint and exit after this step without changing the schedule (for time-limited jobs)"),
        click.option("--allow-data-change", is_flag=True,
                     help="resume even though --data differs from the checkpoint's (folders, weights or contents)"),
        click.option("--log", "log", multiple=True, type=click.Choice(TRACKERS),
                     help="also log the metrics to TensorBoard (RUN/tb) or Weights & Biases (repeatable; "
                     "pip install -e '.[track]'; WANDB_MODE=offline works without network)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_config(stage: str, preset_name: str, assignments, **plain):
    """The preset, then plain options, then --set (the names given travel in `set_fields`)."""
    items = [f"{k}={v}" for k, v in plain.items() if v is not None] + list(assignments)
    try:
        return apply_overrides(preset(preset_name, stage), items)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@one_line_errors
def run(stage: str, preset_name: str, data: str, out: Path, init: Path | None, assignments, stop_at, **plain) -> None:
    allow_data_change, log = plain.pop("allow_data_change"), tuple(plain.pop("log"))
    compile_ = plain.pop("compile_")
    if compile_ is not None:
        plain["compile"] = "on" if compile_ else "off"
    plain["device"] = None if plain.get("device") == "auto" else plain.get("device")
    cfg = build_config(stage, preset_name, assignments, **plain)
    try:
        result = train(cfg, RunSpec(stage, data, out, init, stop_at, allow_data_change, log))
    except KeyboardInterrupt as e:  # a second Ctrl-C in training, or a stop signal before it began
        raise CommandError("interrupted; the last checkpoint in OUT (if any) is kept",
                           128 + getattr(e, "signum", signal.SIGINT)) from None
    if result.signal is not None:
        raise SystemExit(128 + result.signal)


@cli.command()
@run_options
def pretrain(preset: str, data: str, out: Path, assignments, stop_at, **plain) -> None:
    """Pretrain from scratch on a `prep wiki` / `prep text` token folder, or a weighted mixture of them."""
    run("pretrain", preset, data, out, None, assignments, stop_at, **plain)


@cli.command()
@run_options
@click.option("--init", type=UserPath(),
              help="pretraining run (or checkpoint) folder whose weights SFT starts from")
def sft(preset: str, data: str, out: Path, init: Path | None, assignments, stop_at, **plain) -> None:
    """Fine-tune on a `prep sft` token folder or a mixture of them (loss on assistant replies only), from --init.

    The model shape comes from --init; the preset NAME means its NAME-sft variant.
    """
    run("sft", preset, data, out, init, assignments, stop_at, **plain)


@cli.command()
@run_options
@click.option("--init", type=click.Path(path_type=Path),
              help="SFT run (or any run or checkpoint folder) whose weights are the policy's start and DPO's reference")
def dpo(preset: str, data: str, out: Path, init: Path | None, assignments, stop_at, **plain) -> None:
    """Preference-tune on a `prep pref` token folder, from --init: --set loss=dpo (default), simpo or orpo.

    \b
    dpo    -log sigmoid(beta * (chosen - rejected log-ratio to the reference)); dpo_beta 0.1 (DPO paper)
    simpo  -log sigmoid(beta * (mean chosen - mean rejected log-prob) - gamma); simpo_beta 2.0, simpo_gamma 1.0
           (SimPO's Llama-3-Base recipe); no reference model
    orpo   chosen NLL - lambda * log sigmoid(log odds ratio); orpo_lambda 0.1 (ORPO paper); no reference model
    For DPO, the --init model scores every pair once before the first step (kept in OUT/reference_logps.npz).
    batch_size and micro_batch_size count sequences, two per pair. The preset NAME means NAME-dpo.
    """
    run("dpo", preset, data, out, init, assignments, stop_at, **plain)


cli.add_command(eval_command)  # `train eval`: train/full_eval.py
cli.add_command(report_command)  # `train report`: train/report.py
cli.add_command(plan_command)  # `train plan`: train/plan_cli.py, train/plan.py
