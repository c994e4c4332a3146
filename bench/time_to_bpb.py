"""Bits per byte at equal wall-clock: the seed recipe against ``RECIPE=modern`` (its cut vocabulary included).

    python -m bench.time_to_bpb --wiki ../shared/data/wiki_zh --seconds 120
    python -m bench.time_to_bpb --wiki W --seconds 600 --preset tiny --set batch_size=16 --set micro_batch_size=16

Both sides start from the same raw Chinese text, in the same run: the seed's side tokenizes it with
Qwen2's full vocabulary, the modern side cuts the vocabulary to its train split (`prep.recipe_vocab`,
the recipe's size unless --vocab-size) and tokenizes with that. The val split is chosen by a hash of each
article's id, so both sides hold out the same articles, and bits per byte does not depend on the
tokenizer. Each side's speed is probed first (a few steps), then it trains a full schedule sized to
--seconds of training (warmup and cosine decay both complete), and its last validation bits per byte is
compared. Printed: steps, tokens, seconds of training (from the logged step rates; evals excluded), val
bpb of each side and the modern/seed ratio. The machine's load moves the steps each side gets; both
sides run under the same load, one after the other.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bench.recipe import Curve, read_curve
from common.cli import make_args
from model.archs import build
from prep.recipe_vocab import recipe_tokenizer
from prep.tokenizer import DEFAULT_TOKENIZER
from prep.wiki import run_wiki
from train.overrides import apply_overrides
from train.presets import preset
from train.trainer import RunSpec, train

SIDES = ("seed", "modern")
PROBE_STEPS = 4


def prep_side(recipe: str, wiki: str, root: Path, vocab_size: int | None, val_fraction: float) -> Path:
    out = root / recipe / "wiki"

    def tokenize(folder: Path, tok: str) -> dict:
        return run_wiki(wiki, folder, tokenizer=tok, val_fraction=val_fraction, show_progress=False)

    tokenize(out, recipe_tokenizer(recipe, DEFAULT_TOKENIZER, out, vocab_size if recipe == "modern" else None,
                                   cut_from=lambda folder: tokenize(folder, DEFAULT_TOKENIZER)))
    return out


def config(recipe: str, preset_name: str, sets: list[str]):
    return apply_overrides(preset(preset_name, "pretrain", recipe), sets)


def tokens_per_second(recipe: str, preset_name: str, sets: list[str], data: Path, out: Path) -> float:
    cfg = config(recipe, preset_name, [*sets, f"max_steps={PROBE_STEPS}", f"eval_every={PROBE_STEPS}",
                                       f"ckpt_every={PROBE_STEPS}", "eval_blocks=1"])
    train(cfg, RunSpec("pretrain", str(data), out), Console(quiet=True))
    curve = read_curve(out, recipe, cfg.lr, cfg.batch_size * cfg.model.block_size, 0)
    return float(curve.tokens[-1] / curve.seconds[-1])


def run_side(recipe: str, preset_name: str, sets: list[str], data: Path, root: Path, seconds: float) -> Curve:
    rate = tokens_per_second(recipe, preset_name, sets, data, root / recipe / "probe")
    cfg = config(recipe, preset_name, sets)
    steps = max(2, int(seconds * rate / (cfg.batch_size * cfg.model.block_size)))
    every = max(1, steps // 5)
    cfg = config(recipe, preset_name, [*sets, f"max_steps={steps}", f"eval_every={every}", f"ckpt_every={steps}",
                                       f"warmup_steps={min(cfg.warmup_steps, steps // 10)}"])
    out = root / recipe / "run"
    train(cfg, RunSpec("pretrain", str(data), out), Console(quiet=True))
    return read_curve(out, recipe, cfg.lr, cfg.batch_size * cfg.model.block_size,
                      build(cfg.model).num_params(non_embedding=True))


def table(curves: dict[str, Curve], seconds: float) -> Table:
    t = Table(title=f"val bits per byte after ~{seconds:.0f} s of training each (same text, same val articles)")
    for col in ("recipe", "tokens trained", "training s", "non-emb. params", "val bpb"):
        t.add_column(col, justify="left" if col == "recipe" else "right")
    for name, c in curves.items():
        t.add_row(name, f"{c.tokens[-1]:,}", f"{c.seconds[-1]:.0f}", f"{c.non_embedding:,}", f"{c.final:.4f}")
    return t


@click.command()
@click.option("--wiki", required=True, help="raw Chinese Wikipedia (wiki_zh folder or file), e.g. ../shared/data/wiki_zh")
@click.option("--seconds", type=click.FloatRange(min=1), default=120, show_default=True,
              help="training seconds each side gets")
@click.option("--preset", "preset_name", default="tiny", show_default=True)
@click.option("--vocab-size", type=click.IntRange(min=300), help="the modern side's cut (default: the recipe's)")
@click.option("--val-fraction", type=float, default=0.02, show_default=True)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="for both sides (batch, shape, ...)")
@click.option("--out", type=click.Path(path_type=Path), help="keep the folders here (default: a temporary folder)")
def main(wiki: str, seconds: float, preset_name: str, vocab_size: int | None, val_fraction: float,
         assignments: tuple[str, ...], out: Path | None) -> None:
    """Train the seed and the modern recipe for the same wall-clock on the same text; print bpb and the ratio."""
    sets = [*assignments, "sample_tokens=0"]
    with tempfile.TemporaryDirectory() as tmp:
        root = out or Path(tmp)
        curves = {}
        for recipe in SIDES:
            data = prep_side(recipe, wiki, root, vocab_size, val_fraction)
            curves[recipe] = run_side(recipe, preset_name, sets, data, root, seconds)
        Console().print(table(curves, seconds))
        print(equal_time_line(curves))


def equal_time_line(curves: dict[str, Curve]) -> str:
    """The ratio at the shorter side's training seconds (the longer side's curve interpolated between evals):
    the probe sizes each schedule, but a loaded machine can still give one side more seconds."""
    t = min(c.seconds[-1] for c in curves.values())
    seed, modern = (curves[k].bpb_at_seconds(t) for k in SIDES)
    return (f"at {t:.0f} s of training: seed {seed:.4f}, modern {modern:.4f} val bpb; modern / seed val bpb at "
            f"equal wall-clock: {modern / seed:.3f} ({(1 - modern / seed) * 100:.1f}% lower)")


if __name__ == "__main__":
    main(args=sys.argv[1:] + make_args())
