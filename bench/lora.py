"""A LoRA step against a full fine-tuning step: tokens/s, peak memory and what is trained and saved.

    python -m bench.lora                                   # tiny and mini shapes, gpt2, on this machine
    python -m bench.lora --preset mini --set arch=qwen3 --device cuda --set dtype=bf16

Both steps are `train.step.Stepper`'s (the one training runs) on the same model shape, micro-batch and
random ids, the full step first (the baseline, in the same run), then the LoRA step (``lora_rank``, 8
unless set; the base frozen, `model.lora`). Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
over the timed steps; elsewhere the memory plan's figure (`train.plan`, checked against the
allocator in tests/train/test_lora.py). The adapter file holds rank x (in + out) fp32 numbers per
adapted layer; the checkpoint adds AdamW's two moments for them.
"""

from __future__ import annotations

import dataclasses
import time

import click
import torch
from rich.console import Console
from rich.table import Table

from model.archs import build
from model.lora import adapter_params, attach
from model.runtime import pick_device, precision
from prep.tokenizer import pad_vocab_size
from train.config import TrainConfig
from train.data import StepBatch
from train.dist import Dist
from train.lora import options_of
from train.overrides import apply_overrides
from train.plan import Setup, fmt, plan_step
from train.presets import preset
from train.stages.sft import SFT
from train.step import Stepper

QWEN2_LEN = 151646


def with_vocab(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the Qwen2 vocabulary's padded width (what a run on Qwen2-tokenized data has)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=pad_vocab_size(QWEN2_LEN)))


def measure(cfg: TrainConfig, device: torch.device, steps: int, warmup: int) -> dict:
    """tokens/s and peak bytes of `cfg`'s optimizer step (a LoRA one when its stage's lora_rank > 0)."""
    torch.manual_seed(0)
    model = build(cfg.model)
    if options_of(cfg) is not None:
        attach(model, options_of(cfg))
    model.to(device)
    prec = precision(device, cfg.dtype)
    stepper = Stepper(model, cfg, Dist(0, 0, 1, device), prec, SFT)
    B, T, V = cfg.micro_batch_size, cfg.model.block_size, cfg.model.vocab_size
    micro = [(torch.randint(0, V, (B, T), device=device), torch.randint(0, V, (B, T), device=device),
              torch.ones(B, T, dtype=torch.bool, device=device)) for _ in range(cfg.accumulation(1))]
    batch = StepBatch(0, micro, B * T * len(micro))
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
        stepper.forward_backward(batch, cfg.lr)
        stepper.apply()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak, source = torch.cuda.max_memory_allocated(device), "measured"
    else:
        plan = plan_step(Setup.of(cfg, V, prec.name, device.type), B, cfg.accumulation(1))
        peak, source = plan.peak, "plan"
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"tokens_per_s": batch.n_targets * steps / seconds, "peak": peak, "source": source, "trained": trained}


@click.command()
@click.option("--preset", "presets", multiple=True, default=("tiny", "mini"), show_default=True,
              help="model shapes to compare (the preset's SFT variant)")
@click.option("--steps", default=5, show_default=True, help="timed optimizer steps")
@click.option("--warmup", default=2, show_default=True, help="untimed steps first (AdamW state, caches)")
@click.option("--micro-batch", type=int, default=None, help="sequences per step (default: the preset's micro-batch)")
@click.option("--device", default="auto", show_default=True)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="override a config field")
def main(presets, steps, warmup, micro_batch, device, assignments) -> None:
    console = Console()
    dev = pick_device(device)
    table = Table("shape", "step", "trained params", "tokens/s", "peak memory", "LoRA / full")
    for name in presets:
        base = apply_overrides(preset(name, "sft"), [*assignments, "compile=off", f"device={dev.type}"])
        micro = micro_batch or base.micro_batch_size
        full_cfg = with_vocab(apply_overrides(base, [f"micro_batch_size={micro}", f"batch_size={micro}", "lora_rank=0"]))
        rank = base.stage.lora_rank or 8
        lora_cfg = with_vocab(apply_overrides(full_cfg, [f"lora_rank={rank}"]))
        full = measure(full_cfg, dev, steps, warmup)
        lora = measure(lora_cfg, dev, steps, warmup)
        m = full_cfg.model
        shape = f"{name} {m.arch} {m.n_layer}x{m.n_embd} B{micro}xT{m.block_size}"
        table.add_row(shape, "full", f"{full['trained'] / 1e6:.2f}M", f"{full['tokens_per_s']:,.0f}",
                      f"{fmt(full['peak'])} ({full['source']})", "")
        table.add_row("", f"LoRA r{rank}", f"{lora['trained'] / 1e6:.3f}M", f"{lora['tokens_per_s']:,.0f}",
                      f"{fmt(lora['peak'])} ({lora['source']})",
                      f"{lora['tokens_per_s'] / full['tokens_per_s']:.2f}x tok/s, {lora['peak'] / full['peak']:.2f}x mem")
        n = adapter_params(lora_cfg.model, options_of(lora_cfg))
        console.print(f"{name}: adapters {n:,} params = {4 * n / 1e6:.2f} MB fp32 "
                      f"({n / lora_cfg.model.param_counts()[0]:.2%} of the model's {lora_cfg.model.param_counts()[0]:,})")
    console.print(table)
    console.print(f"device {dev}; {steps} timed steps after {warmup} warm-up; the same shape, micro-batch and ids")


if __name__ == "__main__":
    main()
