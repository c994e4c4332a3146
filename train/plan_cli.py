"""``python -m train plan``: the memory of a training step as tables, and the largest micro-batch that fits.

The model of memory and its sources are in `train.plan`; this module only shows it.
"""

from __future__ import annotations

import click
import torch
from rich.console import Console
from rich.table import Table

from common.cli import one_line_errors
from model.archs.gpt2 import GPTConfig
from model.cli_common import dtype_option
from model.runtime import resolve_dtype
from prep.tokenizer import load_tokenizer, pad_vocab_size
from train.config import AUTO
from train.overrides import apply_overrides
from train.plan import (
    CUDA_CONTEXT,
    SAFETY,
    PlanError,
    Setup,
    StepPlan,
    divisors,
    fmt,
    free_memory,
    largest_micro,
    layer_activations,
    param_counts,
    parse_size,
    plan_step,
)
from train.presets import SIZES, compose
from train.stages import STAGES, StageError
from train.stages import get as get_stage

PART_LABELS = {  # key: (table label, how it is counted; N tokens per micro-batch, C width, V vocabulary)
    "weights": ("weights", "4 B x P parameters (fp32)"),
    "gradients": ("gradients", "4 B x P"),
    "optimizer": ("AdamW moments", "2 x 4 B x P"),
    "ddp": ("DDP gradient buckets", "4 B x P"),
    "amp_weights": ("autocast weight copies", "2 B x the blocks' Linear parameters"),
    "activations": ("activations", "saved for backward"),
    "hidden": ("final hidden states", "4 B x N x C, until the loss"),
    "grad_h": ("loss: hidden-state grad", "4 B x N x C"),
    "grad_w": ("loss: weight grad", "4 B x V x C"),
    "chunk": ("loss: one chunk", "2 x 4 B x chunk x V (logits, logsumexp)"),
    "scaled_grads": ("loss backward", "4 B x (N + V) x C: both grads scaled"),
    "block_backward": ("blocks' backward", "the V x C grad waiting + one MLP's grads"),
    "embedding_backward": ("embedding backward", "4 B x V x C dense grad"),
    "teacher": ("teacher targets", "13 B x N x K + 12 B x chunk x K (kd_weight > 0, K = 12)"),
}


def plan_table(plan: StepPlan) -> Table:
    """The parts of a step's memory, which of them are live at the peak, and the peak."""
    s = plan.setup
    P, _ = param_counts(s)
    layer = layer_activations(s, plan.micro)
    attention = s.n_layer * sum(v for k, v in layer.items() if k.startswith("attention buffers"))
    notes = {key: how for key, (_, how) in PART_LABELS.items()}
    notes["weights"] = f"4 B x P = {P / 1e6:.1f}M parameters (fp32)"
    notes["activations"] = f"{s.n_layer} layers x {fmt(sum(layer.values()))} (+ embeddings, ln_f, batch)"
    if s.amp:
        notes["chunk"] = "logits, logsumexp, bf16 weight + its gradient's matmul"
    live = set(plan.moments[plan.peak_at])
    table = Table(title=f"One training step: {s.n_layer}x{s.n_embd}, block {s.block_size}, vocab {s.vocab_size:,}, "
                        f"{s.dtype} on {s.device}, micro-batch {plan.micro} x {plan.accumulation} accumulation")
    for column, justify in (("memory", "left"), ("size", "right"), ("at the peak", "center"), ("how", "left")):
        table.add_column(column, justify=justify)
    for key, (label, _) in PART_LABELS.items():
        if plan.parts[key]:
            table.add_row(label, fmt(plan.parts[key]), "yes" if key in live else "", notes[key])
        if key == "activations":
            table.add_row("  attention buffers", fmt(attention), "", "in the activations: logsumexp, or T x T scores")
    table.add_row(f"[bold]peak ({plan.peak_at})", f"[bold]{fmt(plan.peak)}", "", "the sum of the parts marked yes")
    return table


def micro_table(s: Setup, batch_size: int, budget: int | None) -> Table:
    """Every micro-batch that keeps the effective batch, with its peak and whether it fits."""
    per_rank = batch_size // s.world_size
    table = Table(title=f"micro-batches for batch_size {batch_size} on {s.world_size} process(es)")
    for column in ("micro-batch", "accumulation", "tokens / step", "peak per GPU" if s.device == "cuda" else "peak",
                   "fits"):
        table.add_column(column, justify="right")
    for micro in divisors(per_rank):
        plan = plan_step(s, micro, per_rank // micro)
        fits = "" if budget is None else ("yes" if plan.peak <= budget else "no")
        table.add_row(str(micro), str(plan.accumulation), f"{plan.tokens_per_step:,}", fmt(plan.peak), fits)
    return table


def _memory_target(gpu_mem: str | None) -> tuple[str, int, str]:
    """(device type, bytes a step may use, what they are): a card of `gpu_mem`, or this machine's free memory."""
    if gpu_mem:
        total = parse_size(gpu_mem, bare_unit="g")
        if total <= CUDA_CONTEXT:
            raise PlanError(f"--gpu-mem {gpu_mem}: a card of {fmt(total)} leaves nothing after its CUDA context "
                            f"(~{fmt(CUDA_CONTEXT)}); give its memory in GB, e.g. --gpu-mem 24GB")
        return "cuda", int(max(total - CUDA_CONTEXT, 0) * SAFETY), (
            f"a {fmt(total)} card: {SAFETY:.0%} of what its CUDA context (~{fmt(CUDA_CONTEXT)}) leaves")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    free = free_memory(device)
    return device.type, int(free * SAFETY), f"this machine's {device.type}: {SAFETY:.0%} of {fmt(free)} free"


@click.command("plan")
@click.option("--preset", "preset_name", default="mini", show_default=True,
              help=f"the size to start from: {', '.join(SIZES)} (old names such as qwen3-tiny still work)")
@click.option("--stage", default="pretrain", show_default=True,
              help=f"the stage whose overlay to plan with: {', '.join(STAGES)} (any registered stage)")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="override a config field, as in `train pretrain` (micro_batch_size=auto: the largest that fits)")
@click.option("--vocab", type=click.IntRange(1, 1 << 24), default=GPTConfig.vocab_size, show_default=True,
              help="padded vocabulary size (the Qwen2 tokenizer's by default; 384 for the bytes tokenizer)")
@click.option("--tokenizer", default=None, metavar="NAME",
              help="take --vocab from this tokenizer: qwen2, a cut vocabulary's folder (prep vocab), bytes, ...")
@click.option("--gpu-mem", help="plan for a CUDA card with this much memory, e.g. 24GB; a bare number is GB "
              "(default: this machine)")
@click.option("--nproc", type=click.IntRange(1, 1 << 16), default=1, show_default=True, help="processes (GPUs), as torchrun's")
@dtype_option(default=None, help="the step's precision (default: the config's dtype, --set dtype=...); auto: as "
              "training picks: bf16 on a card that has it (Ampere and later; give fp16 for older), fp32 on a CPU")
@one_line_errors
def plan_command(preset_name: str, stage: str, assignments, vocab: int, tokenizer: str | None, gpu_mem: str | None,
                 nproc: int, dtype: str | None) -> None:
    """How much memory one training step needs, and the largest micro-batch that fits.

    Computed from the model's tensors (the formulas are in train/plan.py), not measured: on CUDA the
    trainer prints the measured peak beside this figure after its first step.
    """
    try:
        plan_stage = get_stage(stage)
        cfg = apply_overrides(compose(preset_name, stage), assignments)
    except (StageError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    if tokenizer is not None:
        vocab = pad_vocab_size(len(load_tokenizer(tokenizer)))
    device, budget, where = _memory_target(gpu_mem)
    bf16 = device == "cuda" and (gpu_mem is not None or torch.cuda.is_bf16_supported())
    dtype = resolve_dtype(device, dtype or cfg.dtype, bf16)
    setup = Setup.of(cfg, vocab, dtype, device, nproc)
    fitting = largest_micro(setup, cfg.batch_size, budget)
    per_rank = cfg.batch_size // nproc
    if cfg.micro_batch_size == AUTO:
        micro = fitting.micro if fitting else 1
    elif per_rank % cfg.micro_batch_size:
        raise click.UsageError(f"micro_batch_size {cfg.micro_batch_size} does not divide batch_size "
                               f"{cfg.batch_size} / {nproc} process(es)")
    else:
        micro = cfg.micro_batch_size
    plan = plan_step(setup, micro, per_rank // micro)
    console = Console()
    console.print(plan_table(plan))
    console.print(micro_table(setup, cfg.batch_size, budget))
    verdict = "[green]fits[/]" if plan.peak <= budget else "[red]does not fit[/]"
    console.print(f"micro-batch {micro} x {plan.accumulation} accumulation x {nproc} process(es): peak "
                  f"{fmt(plan.peak)} per {'GPU' if device == 'cuda' else 'process'}, {plan.tokens_per_step:,} tokens "
                  f"per optimizer step; {verdict} in {fmt(budget)} ({where}).")
    if plan_stage.plan_note:
        console.print(f"{stage}: {plan_stage.plan_note}")
    if fitting is None:
        console.print("[red]No micro-batch fits[/]: try --dtype bf16, --set loss_chunk_tokens=256, more processes or "
                      "a smaller model.")
    else:
        console.print(f"Largest micro-batch that fits: {fitting.micro} (accumulation {fitting.accumulation}, peak "
                      f"{fmt(fitting.peak)}); train with --set micro_batch_size={fitting.micro}, or "
                      "micro_batch_size=auto to choose at run start.")
