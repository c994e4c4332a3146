"""What preference tuning costs: tokens/s of a DPO step vs an SFT step on the same pairs, and the
one-time reference pass.

    python -m bench.dpo                                # tiny preset, sample_data/pref (prepped here)
    python -m bench.dpo --data data_bin/pref --preset mini --set micro_batch_size=8 --steps 10   # a GPU

Both steps are `train.step.Stepper` steps of the same model on the same rows: DPO's micro-batches come
from its pair sampler (chosen and rejected dialogs of micro_batch_size / 2 pairs), SFT's from the SFT
block sampler started at the same dialog starts (a pref folder's turns.idx), so both process
micro_batch_size x block_size tokens; what differs is the loss (per-row log-probs, each chunk's logits
recomputed in the backward) and the pair bookkeeping. The reference pass is `train.pref_reference`'s
forward-only scoring of every training pair by the initial model, timed once.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.train import time_steps
from model.archs import build
from model.runtime import pick_device, precision
from prep.pref import run_pref
from prep.tokenfile import open_token_folder
from prep.tokenizer import pad_vocab_size
from train.data import BlockSampler, StepLoader
from train.dist import Dist
from train.overrides import apply_overrides
from train.pref_reference import score_pairs
from train.presets import preset
from train.stages import get as get_stage
from train.step import Stepper

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "pref" / "dpo_zh.jsonl"


def measure(cfg, split, stage_name: str, dev, steps: int, warmup: int, console: Console) -> float:
    """Median seconds of a step of `stage_name` on `split` (a fresh model each time: the same start)."""
    torch.manual_seed(cfg.seed)
    model = build(cfg.model).to(dev)
    stage = get_stage(stage_name).for_config(cfg)
    stepper = Stepper(model, cfg, Dist(0, 0, 1, dev), precision(dev, cfg.dtype), stage)
    T, accumulation = cfg.model.block_size, cfg.accumulation(1)
    sampler = (stage.sampler([split], [1.0], T, cfg.micro_batch_size, cfg.seed) if stage_name == "dpo"
               else BlockSampler(split, T, cfg.micro_batch_size, cfg.seed, sft=True))
    loader = StepLoader(sampler, 0, accumulation, 0, dev, stage.count)
    try:
        return float(np.median(time_steps(stepper, loader, cfg.lr, warmup, steps, dev, console)))
    finally:
        loader.close()


@click.command()
@click.option("--data", type=click.Path(path_type=Path), help="a pref token folder (default: sample_data/pref, prepped)")
@click.option("--preset", "preset_name", default="tiny", show_default=True)
@click.option("--steps", default=4, show_default=True)
@click.option("--warmup", default=1, show_default=True)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE")
def main(data: Path | None, preset_name: str, steps: int, warmup: int, assignments) -> None:
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = Path(tmp) / "pref"
            run_pref(SAMPLE, data, max_len=65, val_fraction=0.0, workers=1, show_progress=False)
        folder = open_token_folder(data)
        split = folder.split("train")
        cfg = apply_overrides(preset(preset_name, "dpo"), list(assignments))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=pad_vocab_size(
            folder.tokenizer["len"])), compile="off" if cfg.compile == "auto" else cfg.compile)
        dev = pick_device(cfg.device)
        step_s = {name: measure(cfg, split, name, dev, steps, warmup, console) for name in ("sft", "dpo")}
        reference_s, n_pairs = reference_pass(cfg, split, dev)
    tokens = cfg.batch_size * cfg.model.block_size
    t = Table(title=f"{preset_name}-dpo on {dev}, {split.n_docs} pairs, {tokens:,} tokens/step", title_justify="left")
    for col in ("", "s/step", "tokens/s", "vs SFT"):
        t.add_column(col, justify="right")
    for name, s in step_s.items():
        t.add_row(name, f"{s:.3f}", f"{tokens / s:,.0f}", f"{step_s['sft'] / s:.2f}x")
    console.print(t)
    epoch = step_s["dpo"] * n_pairs / (cfg.batch_size // 2)
    console.print(f"reference pass: {n_pairs} pairs in {reference_s:.2f}s ({n_pairs / reference_s:,.1f} pairs/s), "
                  f"{reference_s / epoch:.0%} of one DPO epoch over them ({epoch:.1f}s)")


def reference_pass(cfg, split, dev) -> tuple[float, int]:
    torch.manual_seed(cfg.seed)
    model = build(cfg.model).to(dev)
    autocast = precision(dev, cfg.dtype).autocast
    index = np.arange(split.n_docs)
    t = time.perf_counter()
    score_pairs(model, split, index, cfg.model.block_size, max(1, cfg.micro_batch_size // 2), dev, autocast)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t, len(index)


if __name__ == "__main__":
    main()
