"""``python -m train all`` (``make all``): the command; the steps are `train.pipeline_all`'s."""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import UserPath, one_line_errors
from common.recipes import RECIPES, RECOMMENDED
from train.presets import SIZES


@click.command("all")
@click.option("--wiki", required=True, help="Chinese Wikipedia (wiki_zh folder or file): the pretraining corpus")
@click.option("--belle", required=True, help="dialogs for SFT: a file, folder or hub name (as `prep sft`)")
@click.option("--pref", help="preference pairs for DPO (as `prep pref`); without it, no DPO stage")
@click.option("--recipe", type=click.Choice(RECIPES), default=RECOMMENDED, show_default=True,
              help="modern (the cut vocabulary, qwen3 + Muon) or seed (common/recipes.py)")
@click.option("--preset", default="mini", show_default=True, help=f"the size: {', '.join(SIZES)}")
@click.option("--out", type=UserPath(), default=Path("runs/all"), show_default=True,
              help="the run's folder: data/, pretrain/, sft/, dpo/, hf/, model-f16.gguf, report.md, all.json")
@click.option("--heldout", help="raw text (file, folder or wiki shard) none of the data holds: `make bpb` on it")
@click.option("--vocab-size", type=click.IntRange(min=300), help="--recipe modern: ids of the cut vocabulary")
@click.option("--val-fraction", type=float, default=0.005, show_default=True, help="every prep's val share")
@click.option("--steps", type=click.IntRange(min=1), help="every training stage's max_steps (a quick run)")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="for every training stage, or STAGE.KEY=VALUE for one (pretrain.max_steps=800)")
@click.option("--harness-limit", type=click.IntRange(min=1), help="questions per harness task (where it runs)")
@one_line_errors
def all_command(wiki, belle, pref, recipe, preset, out, heldout, vocab_size, val_fraction, steps, assignments,
                harness_limit) -> None:
    """Everything from raw text to a model card, a GGUF and a report, in OUT; rerun to resume.

    Steps: prep wiki (and the vocabulary cut), prep sft, prep pref, pretrain, sft, dpo, held-out bits per
    byte, the harness (where the hub answers), the Hugging Face export (README.md = the model card), the
    GGUF, the report (OUT/report.md). A finished step is skipped by what it recorded in OUT/all.json; the
    training stage in flight resumes exactly; a step asked with other inputs or settings is refused.
    """
    from train.pipeline_all import AllSpec, run_all

    run_all(AllSpec(wiki, belle, out, pref, recipe, preset, heldout, vocab_size, val_fraction, steps,
                    tuple(assignments), harness_limit=harness_limit))
