"""``python -m train STAGE|eval|report|plan``: thin Click commands over `train.trainer.train` and friends.

There is one command per registered stage (`train.stages`), made from the stage's declaration (its
help, whether it takes --init) when the command line names it, so a stage registered by any module
(a test's included) has its command without an edit here. A preset names a size; the stage's overlay
applies by itself; plain options and ``--set key=value`` (repeatable, typed from the config's fields)
override them. Errors a user can fix are one line and exit non-zero; an interrupted run exits 128 + the
signal (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP) after saving its checkpoint, so scripts can
tell it from a finished one.
"""

from __future__ import annotations

import signal
from pathlib import Path

import click

from common.cli import CommandError, UserPath, one_line_errors
from common.recipes import DEFAULT_RECIPE, RECIPES
from model.cli_common import device_option, dtype_option
from train.all_cli import all_command
from train.full_eval import eval_command
from train.overrides import apply_overrides
from train.plan_cli import plan_command
from train.presets import SIZES, recipe_config, resolve
from train.report import report_command
from train.stages import STAGES, LMStage
from train.tracking import TRACKERS
from train.trainer import RunSpec, train

DATA_HELP = ("token folder (prep output), or a mixture of several with weights: FOLDER:0.3,FOLDER:0.7 (the part after "
             "the last ':' is a weight when it is a number; a value naming an existing folder is that folder)")
PRESET_HELP = (f"the size to start from: {', '.join(SIZES)} (the stage's own rates apply by themselves; the "
               "architecture is --set arch=...; old names such as tiny-sft or qwen3-tiny still work)")


class StageGroup(click.Group):
    """The ``train`` group: its fixed commands, and one command per registered stage, made when asked for."""

    def list_commands(self, ctx) -> list[str]:
        return [*STAGES, *sorted(super().list_commands(ctx))]

    def get_command(self, ctx, name):
        if name in STAGES:
            return stage_command(STAGES[name])
        return super().get_command(ctx, name)


@click.group(cls=StageGroup)
def cli() -> None:
    """Train a model (any architecture: --set arch=...): `pretrain` on a token folder from `prep wiki`, `sft` on
    one from `prep sft`, then `dpo`
    on one from `prep pref`.

    Run the same command again on the same --out to resume exactly where it stopped. Under
    `torchrun --nproc_per_node N` the same command trains on N processes (DDP).
    """


def run_options(f):
    options = [
        click.option("--preset", default="mini", show_default=True, help=PRESET_HELP),
        click.option("--recipe", type=click.Choice(RECIPES), default=DEFAULT_RECIPE, show_default=True,
                     help="laid over the size and the stage's overlay, under --set: seed (GPT-2 + AdamW, the "
                     "reference) or modern (qwen3 + Muon for pretraining; common/recipes.py says what and why)"),
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


def stage_command(stage: LMStage) -> click.Command:
    """``train NAME``: the run options, and --init for a stage that starts from a trained model."""

    def command(preset: str, data: str, out: Path, assignments, stop_at, init: Path | None = None, **plain) -> None:
        run(stage.name, preset, data, out, init, assignments, stop_at, **plain)

    command.__doc__ = stage.help or f"Train stage {stage.name} on a `{stage.prep_command}` token folder."
    if stage.needs_init:
        command = click.option("--init", type=UserPath(), help=stage.init_help)(command)
    return click.command(stage.name)(run_options(command))


def build_config(stage: str, preset_name: str, assignments, recipe: str = DEFAULT_RECIPE, **plain):
    """The size preset and the stage's overlay, the recipe, then plain options, then --set (the names given
    travel in `set_fields`). An old preset name prints what it means now."""
    items = [f"{k}={v}" for k, v in plain.items() if v is not None] + list(assignments)
    try:
        note = resolve(preset_name)[2]
        cfg = apply_overrides(recipe_config(preset_name, stage, recipe), items)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if note:
        click.echo(f"note: {note}", err=True)
    return cfg


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


cli.add_command(all_command)  # `train all` (make all): train/all_cli.py, train/pipeline_all.py
cli.add_command(eval_command)  # `train eval`: train/full_eval.py
cli.add_command(report_command)  # `train report`: train/report.py
cli.add_command(plan_command)  # `train plan`: train/plan_cli.py, train/plan.py
