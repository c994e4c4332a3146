"""One look at a CUDA machine: the model of record (``mini``) in both architectures, bf16 + torch.compile.

    python -m bench.gpu_check          # or: make gpu-check; about 5 minutes on one modern GPU

For arch gpt2 and qwen3 at mini's shape (12 x 768, block 256, batch 256 sequences, the Qwen2
vocabulary), printed one line each: training tokens/s and MFU (`train.perf`), the step's
``torch.cuda.max_memory_allocated`` beside `train plan`'s figure for the same micro-batch (chosen by
``micro_batch_size=auto``; the plan is for eager mode, a compiled step usually needs less), a 20-step
loss curve (it must fall: the batches are a few hundred token sequences repeated, which a working
model learns at once), and the aggregate tokens/s of a real server (`python -m model serve`, greedy
streamed chat requests) at 1 and 8 clients. Without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.serve import ServerProcess, make_checkpoint, questions, serve_all
from model.archs import build
from model.runtime import precision
from prep.tokenizer import load_tokenizer, pad_vocab_size
from train.data import StepBatch
from train.dist import Dist
from train.optim import lr_at
from train.overrides import apply_overrides
from train.perf import peak_flops
from train.plan import Setup, fmt, plan_step, resolve_micro_batch
from train.presets import preset
from train.stages.pretrain import PRETRAIN
from train.step import Stepper

STEPS = 20
TIMED_FROM = 5  # steps before this one compile and warm up


def batches(cfg, vocab_len: int, device: torch.device) -> list[tuple]:
    """Micro-batches drawn from 512 fixed random sequences: learnable, so the loss must fall."""
    g = torch.Generator().manual_seed(0)
    T = cfg.model.block_size
    pool = torch.randint(0, vocab_len, (512, T + 1), generator=g)
    micro = []
    for _ in range(cfg.accumulation(1)):
        rows = pool[torch.randint(0, 512, (cfg.micro_batch_size,), generator=g)].to(device)
        micro.append((rows[:, :-1], rows[:, 1:], None))
    return micro


def train_check(arch: str, device: torch.device, vocab_len: int, preset_name: str = "mini",
                sets: tuple[str, ...] = ("compile=on", "micro_batch_size=auto")) -> str:
    """Train `STEPS` steps of the preset; one report line and the loss curve (tests run it on a CPU, tiny)."""
    cfg = apply_overrides(preset(preset_name), [f"arch={arch}", "dtype=bf16", f"max_steps={STEPS}", "warmup_steps=2",
                                                *sets])
    cfg, _ = resolve_micro_batch(cfg, 1, device, pad_vocab_size(vocab_len), "bf16")
    torch.manual_seed(0)
    model = build(dataclasses.replace(cfg.model, vocab_size=pad_vocab_size(vocab_len))).to(device)
    stepper = Stepper(model, cfg, Dist(0, 0, 1, device), precision(device, "bf16"), PRETRAIN)
    losses, start, peak = [], 0.0, 0
    tokens = cfg.batch_size * cfg.model.block_size
    for step in range(STEPS):
        micro = batches(cfg, vocab_len, device)
        if step == TIMED_FROM:
            torch.cuda.synchronize()
            start = time.perf_counter()
        if step == 1:
            torch.cuda.reset_peak_memory_stats(device)
        stats = stepper.forward_backward(StepBatch(step, micro, tokens), lr_at(step, cfg))
        stepper.apply()
        losses.append(stats.loss)
        if step == 1:
            peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.synchronize()
    rate = tokens * (STEPS - TIMED_FROM) / (time.perf_counter() - start)
    flops, _ = peak_flops(device, torch.bfloat16)
    planned = plan_step(Setup.of(cfg, pad_vocab_size(vocab_len), "bf16", "cuda"), cfg.micro_batch_size,
                        cfg.accumulation(1)).peak
    falls = "falls" if losses[-1] < losses[0] - 1.0 else "DOES NOT FALL"
    curve = " ".join(f"{x:.2f}" for x in losses)
    return (f"{arch}: {model.num_params() / 1e6:.0f}M params, micro-batch {cfg.micro_batch_size} x "
            f"{cfg.accumulation(1)}; {rate:,.0f} tokens/s, MFU {model.flops_per_token() * rate / flops:.1%}; "
            f"memory of step 2 {fmt(peak)} (plan {fmt(planned)}, {peak / planned:.0%})\n  loss {falls}: {curve}")


def serve_check(arch: str, folder: Path) -> str:
    ckpt = make_checkpoint(folder / arch, {"arch": arch, "n_layer": 12, "n_head": 12, "n_embd": 768,
                                           "block_size": 256})
    server = ServerProcess(ckpt, "cuda", 8)
    try:
        items = questions(16)
        asyncio.run(serve_all(server.api, items[:1], 1, 4))  # warm-up
        rates = {c: asyncio.run(serve_all(server.api, items, c, 64)).rate for c in (1, 8)}
    finally:
        server.stop()
    return f"{arch}: server aggregate {rates[1]:,.0f} tokens/s at 1 client, {rates[8]:,.0f} at 8 ({rates[8] / rates[1]:.1f}x)"


def main() -> None:
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing to check (run it on a machine with a GPU)")
        sys.exit(0)
    device = torch.device("cuda")
    vocab_len = len(load_tokenizer("qwen2"))
    print(f"gpu-check on {torch.cuda.get_device_name(device)}: mini, bf16, torch.compile, {STEPS} steps per arch")
    for arch in ("gpt2", "qwen3"):
        print(train_check(arch, device, vocab_len), flush=True)
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("gpt2", "qwen3"):
            print(serve_check(arch, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
