"""Training throughput of a preset on this machine: tokens/s, MFU, and the sampler's share of a step.

    python -m bench.train                                  # tiny preset, synthetic Qwen2-sized data
    python -m bench.train --preset mini --steps 20         # the model of record (meant for a GPU)
    python -m bench.train --preset mini --steps 2 --warmup 1 --micro-steps 1 --set micro_batch_size=4   # CPU
    python -m bench.train --data data_bin/wiki             # real token files
    python -m bench.train --mix 3                          # a 3-folder mixture (synthetic), its sampler vs one folder's
    python -m bench.train --data "data_bin/wiki:0.3,data_bin/web:0.7"

It times exactly the optimizer step that training runs (`train.step.Stepper`: compile, autocast, fused
AdamW, DDP-free single process) after a few warm-up steps (compilation happens there). MFU is
flops_per_token x tokens/s over the peak: on CUDA the device's dense bf16 datasheet figure, on a CPU
a fp32 matmul timed in this same run. The sampler (memmap reads, padding, masks) runs on a background
thread during training; here it is also timed alone, as a share of the step it must hide behind, and
beside it (the baseline, in the same run) the sampler of the first folder alone: for a mixture the
ratio is what drawing each block's source costs on top.
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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from model.archs import build
from model.lm import CausalLM
from model.runtime import pick_device, precision
from prep.tokenfile import TokenFolderWriter
from prep.tokenizer import pad_vocab_size
from train.config import TrainConfig
from train.data import BlockSampler, StepLoader, make_sampler
from train.dist import Dist
from train.mixture import Mixture, open_mixture
from train.overrides import apply_overrides
from train.perf import peak_flops
from train.presets import preset
from train.stages import get as get_stage
from train.step import Stepper

QWEN2_LEN = 151646


def synthetic_folder(folder: Path, n_tokens: int, vocab_len: int, seed: int = 0) -> Path:
    """A pretraining token folder of random ids (throughput does not depend on what the ids are)."""
    rng = np.random.default_rng(seed)
    identity = {"name": "synthetic", "fingerprint": "-", "len": vocab_len, "special_ids": {},
                "vocab_size": (vocab_len + 127) // 128 * 128}
    with TokenFolderWriter(folder, "pretrain", identity) as w:
        w.add("train", rng.integers(0, vocab_len, n_tokens, dtype=np.uint32))
        w.add("val", rng.integers(0, vocab_len, 1024, dtype=np.uint32))
        w.finish()
    return folder


@click.command()
@click.option("--preset", "preset_name", default="tiny", show_default=True, help="tiny, mini, ...")
@click.option("--data", help="a token folder or a mixture a:0.3,b:0.7 (default: synthetic Qwen2-sized ids)")
@click.option("--mix", type=click.IntRange(min=1), default=1, show_default=True,
              help="without --data: a mixture of this many synthetic folders, weighted 1:2:3...")
@click.option("--steps", default=10, show_default=True, help="timed optimizer steps")
@click.option("--warmup", default=3, show_default=True, help="untimed steps first (compilation, caches)")
@click.option("--micro-steps", type=int, help="micro-batches per step (default: the preset's accumulation)")
@click.option("--device", default="auto", show_default=True)
@click.option("--compile/--no-compile", "compile_", default=None, help="default: on for CUDA")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="override a config field")
def main(preset_name, data, mix, steps, warmup, micro_steps, device, compile_, assignments) -> None:
    console = Console()
    items = list(assignments) + [f"device={device}"]
    if compile_ is not None:
        items.append(f"compile={'on' if compile_ else 'off'}")
    try:
        cfg = apply_overrides(preset(preset_name), items)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    micro_steps = micro_steps or cfg.accumulation(1)
    dev = pick_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        T = cfg.model.block_size
        n_tokens = max(200_000, 4 * cfg.micro_batch_size * (T + 1))
        mixture = open_mixture(data or synthetic_mixture(Path(tmp), mix, n_tokens))
        if mixture.kind == "pref":
            raise click.UsageError(f"{data}: a preference folder; its step is timed by python -m bench.dpo")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, vocab_size=pad_vocab_size(mixture.tokenizer["len"])))
        torch.manual_seed(cfg.seed)
        model = build(cfg.model).to(dev)
        stepper = Stepper(model, cfg, Dist(0, 0, 1, dev), precision(dev, cfg.dtype), get_stage(mixture.kind))
        splits = [source.split("train") for source in mixture.sources]
        sft = mixture.kind == "sft"
        loader = StepLoader(make_sampler(splits, mixture.weights, T, cfg.micro_batch_size, cfg.seed, sft), 0,
                            micro_steps, 0, dev)
        try:
            times = time_steps(stepper, loader, cfg.lr, warmup, steps, dev, console)
        finally:
            loader.close()
        sampler_s = sampler_seconds(loader)
        one = StepLoader(BlockSampler(splits[0], T, cfg.micro_batch_size, cfg.seed, sft), 0, micro_steps, 0, dev, depth=1)
        one.close()  # only its host_batch is timed
        baseline_s = sampler_seconds(one)
    report(console, preset_name, cfg, model, stepper, micro_steps, float(np.median(times)), steps, mixture,
           sampler_s, baseline_s)


def synthetic_mixture(root: Path, n_folders: int, n_tokens: int) -> str:
    """``--data`` for `n_folders` synthetic folders of `n_tokens` each (so the first alone is a fair
    baseline for the sampler), weighted 1:2:3..."""
    if n_folders == 1:
        return str(synthetic_folder(root / "synthetic", n_tokens, QWEN2_LEN))
    return ",".join(f"{synthetic_folder(root / f'synthetic{k}', n_tokens, QWEN2_LEN, seed=k)}:{k}"
                    for k in range(1, n_folders + 1))


def sampler_seconds(loader: StepLoader, repeats: int = 15) -> float:
    """Median seconds to prepare one step's micro-batches on the host (what the loader thread does)."""
    return float(np.median([time_call(lambda s=s: loader.host_batch(10_000 + s)) for s in range(repeats)]))


def time_call(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_steps(stepper: Stepper, loader: StepLoader, lr: float, warmup: int, steps: int, dev: torch.device,
               console: Console) -> list[float]:
    """Seconds of each timed step (after `warmup` untimed ones)."""
    times = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("warm-up + timed steps", total=warmup + steps)
        for step in range(warmup + steps):
            t = time.perf_counter()
            stepper.forward_backward(loader.get(step), lr)  # returns after the step's one host sync
            stepper.apply()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if step >= warmup:
                times.append(time.perf_counter() - t)
            progress.advance(task)
    return times


def report(console: Console, preset_name: str, cfg: TrainConfig, model: CausalLM, stepper: Stepper, micro_steps: int,
           step_s: float, steps: int, mixture: Mixture, sampler_s: float, baseline_s: float) -> None:
    m, dev = cfg.model, stepper.d.device
    peak, peak_note = peak_flops(dev, stepper.precision.amp_dtype or torch.float32)
    tokens = micro_steps * cfg.micro_batch_size * m.block_size
    tps = tokens / step_s
    mfu = model.flops_per_token(m.block_size) * tps / peak
    table = Table(title=f"train bench: preset {preset_name} on {dev}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("model", f"{model.num_params() / 1e6:.1f}M params, {m.n_layer}x{m.n_embd}, vocab {m.vocab_size}"),
        ("precision / compile", f"{stepper.precision.name} / {'on' if stepper.compiled else 'off'}"),
        ("tokens per step", f"{micro_steps} x {cfg.micro_batch_size} x {m.block_size} = {tokens:,}"),
        ("step time (median)", f"{1000 * step_s:,.1f} ms over {steps} steps"),
        ("tokens/s", f"{tps:,.0f}"),
        ("FLOPs/token (6N + 12LCT)", f"{model.flops_per_token(m.block_size) / 1e6:,.1f} M"),
        ("peak", peak_note),
        ("MFU", f"{100 * mfu:.1f}%"),
        ("data", ", ".join(f"{s.name} {100 * s.weight:.3g}%" for s in mixture.sources)),
        ("sampler per step (background thread)", f"{1000 * sampler_s:.2f} ms = {100 * sampler_s / step_s:.2g}% of a step"),
        ("sampler of the first folder alone", f"{1000 * baseline_s:.2f} ms: this sampler costs "
                                              f"{sampler_s / baseline_s:.2f}x"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
