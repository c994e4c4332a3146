"""What a cut vocabulary (`prep vocab`) buys: training speed, size, and held-out bits per byte in equal time.

    python -m bench.vocab                                  # tiny + mini, 151,646 / 32,768 / 16,384 ids, sample_data
    python -m bench.vocab --wiki ../shared/data/wiki_zh --val-fraction 0.02 --seconds 300   # race on real text
    python -m bench.vocab --presets mini --seconds 0       # the throughput table alone

1. Throughput, in the same run: training tokens/s (the optimizer step `bench.train` times) of each preset
   at each vocabulary size on synthetic ids, the sizes taking turns step by step, and the model's parameters and FLOPs per token (6N + 12LCT).
2. The race: `tiny` trained on the same wiki text tokenized with Qwen2 and with Qwen2 cut to that text's
   train split, each for `--seconds` (steps = seconds x the tokens/s measured in part 1), then scored on
   the whole held-out val split. Bits per byte compare across tokenizers (same text, same bytes).
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

from bench.train import QWEN2_LEN, synthetic_folder
from model.archs import build
from model.runtime import pick_device, precision
from prep.tokenizer import pad_vocab_size
from prep.vocab_build import build_vocab
from prep.wiki import run_wiki
from train.config import TrainConfig
from train.data import StepLoader, make_sampler
from train.dist import Dist
from train.full_eval import evaluate_checkpoint
from train.mixture import open_mixture
from train.overrides import apply_overrides
from train.presets import preset
from train.stages import get as get_stage
from train.step import Stepper
from train.trainer import RunSpec, train

CPU_MINI = ("micro_batch_size=1", "batch_size=1")  # one sequence per step: mini's throughput on a CPU


def config_for(preset_name: str, vocab_len: int, device: str) -> TrainConfig:
    items = [f"device={device}", *(CPU_MINI if preset_name == "mini" and device != "cuda" else ())]
    cfg = apply_overrides(preset(preset_name), items)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=pad_vocab_size(vocab_len)))


def racer(preset_name: str, vocab_len: int, device: str, tmp: Path) -> tuple:
    """``(config, model, stepper, loader)``: `preset_name` with `vocab_len` ids, on synthetic ids."""
    cfg = config_for(preset_name, vocab_len, device)
    dev = pick_device(cfg.device)
    T = cfg.model.block_size
    folder = synthetic_folder(tmp / f"ids{vocab_len}", max(50_000, 4 * cfg.micro_batch_size * (T + 1)), vocab_len)
    torch.manual_seed(cfg.seed)
    model = build(cfg.model).to(dev)
    stepper = Stepper(model, cfg, Dist(0, 0, 1, dev), precision(dev, cfg.dtype), get_stage("pretrain"))
    split = open_mixture(str(folder)).sources[0].split("train")
    loader = StepLoader(make_sampler([split], [1.0], T, cfg.micro_batch_size, cfg.seed, False), 0, 1, 0, dev)
    return cfg, model, stepper, loader


def throughput(preset_name: str, lens: list[int], rounds: int, device: str, tmp: Path) -> list[dict]:
    """Median training tokens/s of `preset_name` at each vocabulary size, with its size. The sizes take
    turns step by step (round 0 warms up), so load from other jobs on a shared machine falls on all alike."""
    racers = [racer(preset_name, n, device, tmp) for n in lens]
    times: dict[int, list[float]] = {n: [] for n in lens}
    try:
        for r in range(rounds + 1):
            for n, (cfg, _, stepper, loader) in zip(lens, racers, strict=True):
                started = time.perf_counter()
                stepper.forward_backward(loader.get(r), cfg.lr)  # returns after the step's one host sync
                stepper.apply()
                if stepper.d.device.type == "cuda":
                    torch.cuda.synchronize(stepper.d.device)
                if r:
                    times[n].append(time.perf_counter() - started)
    finally:
        for *_, loader in racers:
            loader.close()
    return [{"preset": preset_name, "ids": n, "params": model.num_params(),
             "flops_per_token": model.flops_per_token(cfg.model.block_size),
             "tokens_per_s": cfg.micro_batch_size * cfg.model.block_size / float(np.median(times[n]))}
            for n, (cfg, model, _, _) in zip(lens, racers, strict=True)]


def race(wiki: Path, size: int, seconds: float, rates: dict[int, float], val_fraction: float, device: str, tmp: Path,
         console: Console) -> list[dict]:
    """`tiny` for `seconds` on Qwen2's ids and on the cut ones; held-out bits per byte of each."""
    full, vocab, cut = tmp / "full", tmp / "vocab", tmp / "cut"
    quiet = Console(quiet=True)
    run_wiki(wiki, full, val_fraction=val_fraction, show_progress=False, console=quiet)
    record = build_vocab([full], vocab, size)
    run_wiki(wiki, cut, tokenizer=str(vocab), val_fraction=val_fraction, show_progress=False, console=quiet)
    rows = []
    for name, data, n_ids in (("full", full, QWEN2_LEN), (f"cut {size:,}", cut, size)):
        cfg = config_for("tiny", n_ids, device)
        steps = max(1, round(seconds * rates[n_ids] / (cfg.batch_size * cfg.model.block_size)))
        cfg = dataclasses.replace(cfg, max_steps=steps, eval_every=steps, ckpt_every=steps, sample_tokens=0)
        started = time.perf_counter()
        train(cfg, RunSpec("pretrain", data, tmp / f"run-{n_ids}"), quiet)
        took = time.perf_counter() - started
        scored = evaluate_checkpoint(tmp / f"run-{n_ids}", data, console=quiet)
        rows.append({"vocab": name, "steps": steps, "tokens": steps * cfg.batch_size * cfg.model.block_size,
                     "seconds": took, "val_bpb": scored["bits_per_byte"], "val_loss": scored["loss"]})
    inc = record["token_increase"][str(full)]
    console.print(f"cut vocabulary: {size:,} ids, covering {record['counted']['coverage']:.2%} of the train split's "
                  f"tokens; token increase: train +{inc['train']['increase']:.2%}, val +{inc['val']['increase']:.2%}")
    return rows


def throughput_table(rows: list[dict], device: torch.device) -> Table:
    table = Table(title=f"training throughput by vocabulary size, on {device} (same run)")
    for col in ("preset", "ids", "params", "FLOPs/token", "tokens/s", "vs full"):
        table.add_column(col, justify="right")
    for r in rows:
        base = next(b for b in rows if b["preset"] == r["preset"] and b["ids"] == QWEN2_LEN)
        table.add_row(r["preset"], f"{r['ids']:,}", f"{r['params'] / 1e6:.1f}M", f"{r['flops_per_token'] / 1e6:.1f}M",
                      f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x")
    return table


def race_table(rows: list[dict], seconds: float) -> Table:
    table = Table(title=f"tiny, steps for {seconds:.0f} s of training each: held-out val bits per byte (lower is better)")
    for col in ("vocabulary", "steps", "tokens", "run wall-clock (with evals, saving)", "val loss", "val bpb"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["vocab"], f"{r['steps']:,}", f"{r['tokens']:,}", f"{r['seconds']:.0f} s",
                      f"{r['val_loss']:.3f}", f"{r['val_bpb']:.3f}")
    return table


@click.command()
@click.option("--presets", default="tiny,mini", show_default=True, help="presets timed in part 1 (the race needs tiny)")
@click.option("--sizes", default="32768,16384", show_default=True, help="cut sizes timed beside the full 151,646")
@click.option("--rounds", default=5, show_default=True, help="timed optimizer steps of each size, taking turns")
@click.option("--wiki", type=click.Path(path_type=Path), default=Path("sample_data/wiki_zh"), show_default=True,
              help="wiki_zh text for the race (tokenized here, twice)")
@click.option("--race-size", default=32768, show_default=True, help="the cut vocabulary raced against the full one")
@click.option("--seconds", default=120.0, show_default=True, help="training time of each racer (0: no race)")
@click.option("--val-fraction", default=0.1, show_default=True, help="held-out share of the race's articles")
@click.option("--device", default="auto", show_default=True)
def main(presets: str, sizes: str, rounds: int, wiki: Path, race_size: int, seconds: float,
         val_fraction: float, device: str) -> None:
    console = Console()
    if seconds > 0 and "tiny" not in presets.split(","):
        raise click.UsageError("the race (--seconds) trains tiny: keep tiny in --presets, or give --seconds 0")
    lens = [QWEN2_LEN, *(int(s) for s in sizes.split(",") if s)]
    with tempfile.TemporaryDirectory() as tmp:
        lens = list(dict.fromkeys([*lens, race_size]))
        rows = [row for p in presets.split(",") for row in throughput(p, lens, rounds, device, Path(tmp))]
        console.print(throughput_table(rows, pick_device(device)))
        if seconds > 0:
            rates = {r["ids"]: r["tokens_per_s"] for r in rows if r["preset"] == "tiny"}
            console.print(race_table(race(wiki, race_size, seconds, rates, val_fraction, device, Path(tmp), console), seconds))


if __name__ == "__main__":
    main()
