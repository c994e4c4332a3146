"""The seed's recipe against the modern one: gpt2 / qwen3 x AdamW / Muon, each at its best learning rate.

    python -m bench.recipe --data data_bin/wiki                     # the tiny preset's body, 300 steps
    python -m bench.recipe --data D --steps 600 --set n_layer=4 --lrs 1e-3,3e-3 --muon-lrs 0.01,0.02

Four recipes train on the same token folder with the same batches, schedule and steps: gpt2 + AdamW
(the seed's), gpt2 + Muon, qwen3 + AdamW and qwen3 + Muon. qwen3's defaults give the same matmul
weights per layer as gpt2 (`model.archs.qwen3`), so the non-embedding parameter counts match (printed).
Each recipe runs once per learning rate of its sweep (AdamW's ``lr``; with Muon, ``muon_lr``, the
AdamW part keeping ``lr`` at the middle of --lrs) and keeps the run with the best final validation
bits per byte. Printed per recipe: that bpb at equal tokens (the last eval), the bpb at equal
training time (the seed's; interpolated between evals, eval time excluded), and the tokens it
needed to reach the seed's final bpb (interpolated; "-" if it never did), as a ratio of the seed's.
The machine's load moves the wall-clock column; the token columns do not depend on it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from common.cli import make_args
from model.archs import build
from train.overrides import apply_overrides
from train.presets import preset
from train.trainer import RunSpec, train

RECIPES = {"gpt2 + AdamW (seed)": ("gpt2", "adamw"), "gpt2 + Muon": ("gpt2", "muon"),
           "qwen3 + AdamW": ("qwen3", "adamw"), "qwen3 + Muon": ("qwen3", "muon")}


@dataclass
class Curve:
    """One run's validation curve: bpb at each eval, after how many tokens and seconds of training."""

    name: str
    lr: float
    tokens: np.ndarray
    seconds: np.ndarray
    bpb: np.ndarray
    non_embedding: int

    @property
    def final(self) -> float:
        return float(self.bpb[-1])

    def bpb_at_seconds(self, t: float) -> float:
        return float(np.interp(t, self.seconds, self.bpb))

    def tokens_to_reach(self, target: float) -> float | None:
        """Tokens at which the curve first gets to `target`, linear between evals; None if never."""
        below = np.nonzero(self.bpb <= target)[0]
        if not len(below):
            return None
        i = int(below[0])
        if i == 0:
            return float(self.tokens[0])
        b0, b1, t0, t1 = self.bpb[i - 1], self.bpb[i], self.tokens[i - 1], self.tokens[i]
        return float(t0 + (t1 - t0) * (b0 - target) / (b0 - b1))


def read_curve(run: Path, name: str, lr: float, tokens_per_step: int, non_embedding: int) -> Curve:
    """The eval lines of metrics.jsonl; training seconds summed from each step's tokens_per_s."""
    seconds, evals = {0: 0.0}, []
    elapsed = 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "tokens_per_s" in r:
            elapsed += tokens_per_step / r["tokens_per_s"]
            seconds[r["step"]] = elapsed
        if "val_bpb" in r:
            evals.append((r["step"], r["val_bpb"]))
    steps = np.array([s for s, _ in evals])
    return Curve(name, lr, steps * tokens_per_step, np.array([seconds[s] for s in steps]),
                 np.array([b for _, b in evals]), non_embedding)


def run_recipe(name: str, sets: list[str], lr: float, data: str, out: Path, console: Console) -> Curve:
    arch, optimizer = RECIPES[name]
    lr_field = "muon_lr" if optimizer == "muon" else "lr"
    cfg = apply_overrides(preset("tiny"), [*sets, f"arch={arch}", f"optimizer={optimizer}", f"{lr_field}={lr}"])
    folder = out / f"{arch}-{optimizer}-{lr:g}"
    train(cfg, RunSpec("pretrain", data, folder), Console(quiet=True))
    model = build(cfg.model)
    curve = read_curve(folder, name, lr, cfg.batch_size * cfg.model.block_size, model.num_params(non_embedding=True))
    console.print(f"{name:22} {lr_field}={lr:<7g} final val bpb {curve.final:.4f}  "
                  f"({curve.seconds[-1]:.0f} s of training)")
    return curve


def best_curves(data: str, sets: list[str], lrs: list[float], muon_lrs: list[float], out: Path,
                console: Console) -> dict[str, Curve]:
    """Every recipe at every learning rate of its sweep; the best final bpb of each."""
    middle = sorted(lrs)[len(lrs) // 2]
    best = {}
    for name, (_, optimizer) in RECIPES.items():
        sweep = muon_lrs if optimizer == "muon" else lrs
        extra = [f"lr={middle}"] if optimizer == "muon" else []
        curves = [run_recipe(name, [*sets, *extra], lr, data, out, console) for lr in sweep]
        best[name] = min(curves, key=lambda c: c.final)
    return best


def table(best: dict[str, Curve]) -> Table:
    seed = best["gpt2 + AdamW (seed)"]
    target, budget = seed.final, seed.seconds[-1]
    t = Table(title=f"val bits per byte; the seed's final {target:.4f} after {seed.tokens[-1]:,} tokens, "
                    f"{budget:.0f} s")
    for col in ("recipe", "best lr", "non-emb. params", "bpb at equal tokens", "bpb at equal time",
                "tokens to seed's final", "x seed's tokens"):
        t.add_column(col, justify="left" if col == "recipe" else "right")
    for name, c in best.items():
        reach = c.tokens_to_reach(target)
        ratio = "-" if reach is None else f"{reach / seed.tokens_to_reach(target):.2f}"
        t.add_row(name, f"{c.lr:g}", f"{c.non_embedding:,}", f"{c.final:.4f}", f"{c.bpb_at_seconds(budget):.4f}",
                  "-" if reach is None else f"{reach:,.0f}", ratio)
    return t


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


@click.command()
@click.option("--data", required=True, help="a pretraining token folder (prep output)")
@click.option("--steps", type=click.IntRange(min=2), default=300, show_default=True, help="optimizer steps of every run")
@click.option("--eval-every", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--lrs", default="1e-3,3e-3", show_default=True, help="AdamW learning rates to sweep")
@click.option("--muon-lrs", default="0.01,0.02,0.04", show_default=True, help="Muon learning rates to sweep")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="fields of the shared config on top of the tiny preset (shape, batch, ...)")
@click.option("--out", type=click.Path(path_type=Path), help="keep the runs here (default: a temporary folder)")
def main(data: str, steps: int, eval_every: int, lrs: str, muon_lrs: str, assignments: tuple[str, ...],
         out: Path | None) -> None:
    """Train the four recipes on DATA at matched size and print the comparison."""
    console = Console(stderr=True)
    sets = [*assignments, f"max_steps={steps}", f"eval_every={eval_every}", f"ckpt_every={steps}", "sample_tokens=0"]
    with tempfile.TemporaryDirectory() as tmp:
        best = best_curves(data, sets, _floats(lrs), _floats(muon_lrs), out or Path(tmp), console)
        Console().print(table(best))


if __name__ == "__main__":
    main(args=sys.argv[1:] + make_args())  # make recipe ARGS="..."
