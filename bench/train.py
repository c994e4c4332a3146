"""Training throughput of a preset on this machine: tokens/s, MFU, and the sampler's share of a step.

    python bench/train.py                                  # tiny preset, synthetic Qwen2-sized data
    python bench/train.py --preset mini --steps 20         # the model of record (meant for a GPU)
    python bench/train.py --preset mini --steps 2 --warmup 1 --micro-steps 1 --set micro_batch_size=4   # CPU
    python bench/train.py --data data_bin/wiki             # real token files

It times exactly the optimizer step that training runs (`train.step.Stepper`: compile, autocast, fused
AdamW, DDP-free single process) after a few warm-up steps (compilation happens there). MFU is
flops_per_token x tokens/s over the peak: on CUDA the device's dense bf16 datasheet figure, on a CPU
a fp32 matmul timed in this same run. The sampler (memmap reads, padding, masks) runs on a background
thread during training; here it is also timed alone, as a share of the step it must hide behind.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.gpt import GPT, GPTConfig  # noqa: E402
from prep.tokenfile import TokenFolderWriter, open_token_folder  # noqa: E402
from train.config import apply_overrides, preset  # noqa: E402
from train.data import BlockSampler, StepLoader  # noqa: E402
from train.dist import Dist, pick_device  # noqa: E402
from train.perf import peak_flops  # noqa: E402
from train.step import Stepper  # noqa: E402

QWEN2_LEN = 151646


def synthetic_folder(folder: Path, n_tokens: int, vocab_len: int) -> Path:
    """A pretraining token folder of random ids (throughput does not depend on what the ids are)."""
    rng = np.random.default_rng(0)
    identity = {"name": "synthetic", "fingerprint": "-", "len": vocab_len, "special_ids": {},
                "vocab_size": (vocab_len + 127) // 128 * 128}
    with TokenFolderWriter(folder, "pretrain", identity) as w:
        w.add("train", rng.integers(0, vocab_len, n_tokens, dtype=np.uint32))
        w.add("val", rng.integers(0, vocab_len, 1024, dtype=np.uint32))
        w.finish()
    return folder


@click.command()
@click.option("--preset", "preset_name", default="tiny", show_default=True, help="tiny, mini, ...")
@click.option("--data", type=click.Path(path_type=Path), help="a token folder (default: synthetic Qwen2-sized ids)")
@click.option("--steps", default=10, show_default=True, help="timed optimizer steps")
@click.option("--warmup", default=3, show_default=True, help="untimed steps first (compilation, caches)")
@click.option("--micro-steps", type=int, help="micro-batches per step (default: the preset's accumulation)")
@click.option("--device", default="auto", show_default=True)
@click.option("--compile/--no-compile", "compile_", default=None, help="default: on for CUDA")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="override a config field")
def main(preset_name, data, steps, warmup, micro_steps, device, compile_, assignments) -> None:
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
        n_tokens = max(200_000, 4 * cfg.micro_batch_size * (cfg.block_size + 1))
        folder = open_token_folder(data or synthetic_folder(Path(tmp) / "synthetic", n_tokens, QWEN2_LEN))
        split = folder.split("train")
        vocab = folder.tokenizer.get("vocab_size") or (folder.tokenizer["len"] + 127) // 128 * 128
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(vocab_size=vocab, **cfg.model_fields())).to(dev)
        model.loss_chunk_tokens = cfg.loss_chunk_tokens
        stepper = Stepper(model, cfg, Dist(0, 0, 1, dev))
        sampler = BlockSampler(split, cfg.block_size, cfg.micro_batch_size, cfg.seed, folder.kind == "sft")
        loader = StepLoader(sampler, 0, micro_steps, 0, dev)
        peak, peak_note = peak_flops(dev, stepper.amp_dtype or torch.float32)
        times = []
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        try:
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("warm-up + timed steps", total=warmup + steps)
                for step in range(warmup + steps):
                    t = time.perf_counter()
                    stepper.forward_backward(loader.get(step), cfg.lr)  # returns after the step's one host sync
                    stepper.apply()
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    if step >= warmup:
                        times.append(time.perf_counter() - t)
                    progress.advance(task)
        finally:
            loader.close()
        sampler_times = []
        for step in range(5):
            t = time.perf_counter()
            loader.host_batch(10_000 + step)
            sampler_times.append(time.perf_counter() - t)

    step_s = float(np.median(times))
    tokens = micro_steps * cfg.micro_batch_size * cfg.block_size
    tps = tokens / step_s
    mfu = model.flops_per_token(cfg.block_size) * tps / peak
    sampler_s = float(np.median(sampler_times))
    table = Table(title=f"train bench: preset {preset_name} on {dev}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("model", f"{model.num_params() / 1e6:.1f}M params, {cfg.n_layer}x{cfg.n_embd}, vocab {vocab}"),
        ("precision / compile", f"{stepper.amp_dtype or torch.float32} / {'on' if stepper.compiled else 'off'}"),
        ("tokens per step", f"{micro_steps} x {cfg.micro_batch_size} x {cfg.block_size} = {tokens:,}"),
        ("step time (median)", f"{1000 * step_s:,.1f} ms over {steps} steps"),
        ("tokens/s", f"{tps:,.0f}"),
        ("FLOPs/token (6N + 12LCT)", f"{model.flops_per_token(cfg.block_size) / 1e6:,.1f} M"),
        ("peak", peak_note),
        ("MFU", f"{100 * mfu:.1f}%"),
        ("sampler per step (background thread)", f"{1000 * sampler_s:.2f} ms = {100 * sampler_s / step_s:.2f}% of a step"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
