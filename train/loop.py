"""The training run shared by pretraining and SFT (SFT = pretraining with masks and an initial model).

`train` checks the data, any checkpoint in OUT and the --init model against each other, resumes
where OUT's checkpoint left off, and runs steps (`train.step.Stepper`) with evals, checkpoints, the
metrics file and the live view, until `max_steps`, `--stop-at` or Ctrl-C. A NaN/inf loss stops the
run before the weights are touched, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from model.gpt import GPT, GPTConfig
from model.io import load_weights_into, read_model_info, resolve_model_dir
from prep.tokenfile import open_token_folder
from prep.tokenizer import pad_vocab_size
from train import dist
from train.checkpoint import (
    check_shape,
    check_tokenizer,
    find_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from train.config import MODEL_FIELDS, TrainConfig
from train.data import BlockSampler, StepLoader, eval_starts
from train.evaluate import bits_per_byte, evaluate_windows, sample_text
from train.metrics import LiveView, MetricsLog
from train.optim import lr_at
from train.perf import peak_flops
from train.plan import cuda_memory_check, resolve_micro_batch
from train.step import PrecisionError, Stepper


class TrainError(ValueError):
    """A problem the user can fix (bad data for the stage, a mismatched model, a diverged run)."""


@dataclass
class RunSpec:
    stage: str  # "pretrain" or "sft"
    data: Path
    out: Path
    init: Path | None = None  # SFT: the pretrained run (or checkpoint) folder to start from
    stop_at: int | None = None  # checkpoint and exit after this step, keeping the schedule of max_steps
    explicit: frozenset[str] = field(default_factory=frozenset)  # config fields set on the command line


@dataclass
class RunResult:
    step: int
    reason: str  # "done", "stop_at" or "interrupted"
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    val_step: int | None  # the step of the last eval
    tokens_per_s: float | None
    wall_s: float


class StopFlag:
    """Ctrl-C / SIGTERM ask for a clean stop at the end of the current step (checkpoint, then exit).

    A second signal more than a second later aborts at once (torchrun forwards the terminal's Ctrl-C,
    so each worker sees the first one twice within milliseconds).
    """

    def __init__(self) -> None:
        self.requested_at: float | None = None
        self.previous = {}

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested_at is not None and now - self.requested_at > 1.0:
            raise KeyboardInterrupt
        self.requested_at = self.requested_at or now

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, no clean stop
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch RNG seed of one step on one rank (dropout): a pure function, so resuming needs no RNG state."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def resolve_model_config(cfg: TrainConfig, spec: RunSpec, identity: dict, d: dist.Dist
                         ) -> tuple[TrainConfig, Path | None, Path | None]:
    """Check the data, checkpoint and --init against each other; ``(config, checkpoint, init folder)``.

    SFT takes the model shape from its --init (or its own checkpoint) unless a field was set on the
    command line, in which case it must agree: a shape mismatch is an error, never a silent reshape.
    """
    ckpt = find_checkpoint(spec.out) if d.is_main else None
    if d.enabled:  # rank 0 looked (and may have repaired an interrupted save); everyone follows its answer
        found = [ckpt is not None]
        torch.distributed.broadcast_object_list(found, src=0)
        ckpt = (spec.out / "checkpoint") if found[0] else None
    init = None
    source = ckpt
    if ckpt is None and spec.stage == "sft":
        if spec.init is None:
            raise TrainError("train sft needs --init <pretraining run folder> (e.g. runs/pretrain)")
        init = source = resolve_model_dir(spec.init)
    if source is None:
        return cfg, None, None
    info = read_model_info(source)
    what = "the checkpoint in OUT" if source == ckpt else "the --init model"
    check_tokenizer(info["tokenizer"], identity, what, str(source))
    shape = {k: v for k, v in info["config"].items() if k in MODEL_FIELDS and k != "dropout"}
    if spec.stage == "sft":
        cfg = replace(cfg, **{k: v for k, v in shape.items() if k not in spec.explicit})
    wanted = {**{k: getattr(cfg, k) for k in shape}, "vocab_size": identity["vocab_size"]}
    check_shape(info["config"], wanted, str(source / "model.json"))
    return cfg, ckpt, init


def train(cfg: TrainConfig, spec: RunSpec, console: Console | None = None) -> RunResult:
    """Run (or resume) one training run to `max_steps` (or `stop_at`, or a Ctrl-C)."""
    d = dist.setup(cfg.device)
    try:
        return _train(cfg, spec, d, console or Console(stderr=True))
    finally:
        dist.teardown()


def _train(cfg: TrainConfig, spec: RunSpec, d: dist.Dist, console: Console) -> RunResult:
    wall_start = time.perf_counter()
    main = d.is_main
    sft = spec.stage == "sft"
    folder = open_token_folder(spec.data)
    want = "sft" if sft else "pretrain"
    if folder.kind != want:
        raise TrainError(f"{spec.data}: a {folder.kind!r} token folder, but `train {spec.stage}` needs a {want!r} one "
                         f"(from `prep {'sft' if sft else 'wiki'}`)")
    identity = dict(folder.tokenizer)
    identity.setdefault("vocab_size", pad_vocab_size(identity["len"]))
    train_split, val_split = folder.split("train"), folder.split("val")
    cfg, ckpt, init = resolve_model_config(cfg, spec, identity, d)
    try:
        cfg, auto = resolve_micro_batch(cfg, d.world_size, d.device, identity["vocab_size"], ckpt=ckpt)
        accumulation = cfg.accumulation(d.world_size)
    except ValueError as e:
        raise TrainError(str(e)) from None
    device = d.device
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = GPT(GPTConfig(vocab_size=identity["vocab_size"], **cfg.model_fields()))
    model.loss_chunk_tokens = cfg.loss_chunk_tokens
    if ckpt is not None or init is not None:
        load_weights_into(model, ckpt or init)
    model.to(device)
    try:
        stepper = Stepper(model, cfg, d)
    except PrecisionError as e:
        raise TrainError(str(e)) from None
    autocast = stepper.autocast
    step = 0
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        stepper.load_state(state)
        step = int(state["step"])

    T = cfg.block_size
    sampler = BlockSampler(train_split, T, cfg.micro_batch_size, cfg.seed, sft)
    val_starts = eval_starts(val_split, T, cfg.eval_blocks, sft) if val_split.n_tokens >= 2 else np.zeros(0, np.int64)
    tokens_per_step = cfg.batch_size * T
    flops_per_token = model.flops_per_token(T)
    peak, peak_note = peak_flops(device, stepper.amp_dtype or torch.float32)
    peak *= d.world_size
    tokenizer = _sample_tokenizer(identity, console if main else None) if main else None
    run_info = {"stage": spec.stage, "data": str(spec.data), "init": str(init) if init else None,
                "world_size": d.world_size, "config": cfg.to_dict(), "auto_micro_batch": auto and auto.to_dict()}
    metrics = MetricsLog(spec.out, step if ckpt is not None else None) if main else None
    if main:
        console.print(
            f"[bold]{spec.stage}[/] {model.num_params() / 1e6:.1f}M params ({cfg.n_layer}x{cfg.n_embd}, "
            f"vocab {identity['vocab_size']}) on {d.world_size} x {device} {stepper.amp_dtype or torch.float32}"
            f"{' compiled' if stepper.compiled else ''}; {cfg.batch_size} x {T} tokens/step = {cfg.micro_batch_size} "
            f"x {accumulation} accumulation x {d.world_size} rank(s); train {train_split.n_tokens:,} tokens, "
            f"val {len(val_starts)} blocks; MFU vs {peak_note}"
        )
        if auto is not None:
            console.print(auto.note)
        if ckpt is not None:
            console.print(f"resuming from {ckpt} at step {step}")
        elif init is not None:
            console.print(f"starting from the weights of {init}")

    def evaluate() -> tuple[float | None, float | None]:
        if not len(val_starts):
            return None, None
        s, n = evaluate_windows(model, val_split, val_starts, T, cfg.micro_batch_size, device, autocast, d.rank,
                                d.world_size)
        s, n = d.all_reduce_sum(torch.tensor([s, n], dtype=torch.float64, device=device)).tolist()
        if n == 0:  # SFT blocks shorter than a user turn: nothing to score
            if main:
                live.print(f"step {step}: the {len(val_starts)} eval blocks hold no target tokens; raise block_size")
            return None, None
        val_loss = s / n
        bpb = bits_per_byte(val_loss, val_split)
        if main:
            metrics.write({"step": step, "val_loss": val_loss, "val_bpb": bpb})
            metrics.plot()
            sample = ""
            if tokenizer is not None:
                sample = sample_text(model, tokenizer, cfg.sample_prompt, sft, cfg.sample_tokens, device, autocast,
                                     cfg.seed)
            bpb_text = f"{bpb:.3f}" if bpb is not None else "n/a"
            train_text = f"train loss {last_loss:.4f}  " if math.isfinite(last_loss) else ""
            live.print(f"step {step}: {train_text}val loss {val_loss:.4f}  val bpb {bpb_text}  "
                       f"| {cfg.sample_prompt!r} -> {sample!r}")
        return val_loss, bpb

    def save() -> None:
        if main:
            save_checkpoint(spec.out, model, stepper.optimizer, stepper.scaler, step, identity, folder.kind, run_info)

    loader = StepLoader(sampler, d.rank, accumulation, step, device)
    reason, saved_step, last_loss, val_loss, val_bpb, val_step = "done", step, math.nan, None, None, None
    rates: list[float] = []
    try:
        with StopFlag() as stop, LiveView(cfg.max_steps, step, main, console) as live:
            if step == 0:  # where the curve starts: ln(vocab) for a fresh model, lower from --init
                (val_loss, val_bpb), val_step = evaluate(), step
            while step < cfg.max_steps:
                if spec.stop_at is not None and step >= spec.stop_at:
                    reason = "stop_at"
                    break
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(cfg.seed, step, d.rank))
                lr = lr_at(step, cfg)
                stats = stepper.forward_backward(loader.get(step), lr, stop.requested)
                last_loss = stats.loss
                if not math.isfinite(last_loss):
                    where = f"the last good checkpoint (step {saved_step}) is in {spec.out / 'checkpoint'}" if (
                        saved_step > 0) else "no checkpoint was written"
                    raise TrainError(f"step {step + 1}: the loss is {last_loss}; stopping ({where}). "
                                     "Try a lower learning rate (--set lr=...) or check the data.")
                stepper.apply()
                step += 1
                dt = time.perf_counter() - t0
                rates.append(tokens_per_step / dt)
                if main and device.type == "cuda" and (line := cuda_memory_check(
                        len(rates), cfg, identity["vocab_size"], d.world_size, device, stepper.compiled)):
                    live.print(line)  # the measured peak beside the plan's
                rec = {"step": step, "loss": last_loss, "lr": lr, "tokens_per_s": tokens_per_step / dt,
                       "mfu": flops_per_token * tokens_per_step / dt / peak, "grad_norm": stats.grad_norm}
                if main and (step % cfg.log_every == 0 or step == cfg.max_steps):
                    metrics.write(rec)
                    live.update(rec)
                if step % cfg.eval_every == 0 or step == cfg.max_steps:
                    (val_loss, val_bpb), val_step = evaluate(), step
                if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
                    save()
                    saved_step = step
                if stats.stop_votes > 0:
                    reason = "interrupted"
                    break
            if saved_step != step:
                save()
    finally:
        loader.close()
        if metrics is not None:
            metrics.close()
    d.barrier()
    steady = rates[1:] or rates  # the first step pays for compilation and warm-up
    result = RunResult(step, reason, None if math.isnan(last_loss) else last_loss, val_loss, val_bpb, val_step,
                       float(np.median(steady)) if steady else None, time.perf_counter() - wall_start)
    if main:
        _summary(console, result, spec.out)
    return result


def _sample_tokenizer(identity: dict, console: Console | None):
    """The data's tokenizer for eval samples, or None (with a note) where it cannot be loaded here."""
    from prep.tokenizer import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(identity["name"])
    except (TokenizerError, OSError) as e:
        if console:
            console.print(f"[yellow]no eval samples: tokenizer {identity['name']!r} not loadable ({e})")
        return None
    if tok.fingerprint != identity.get("fingerprint"):
        if console:
            console.print(f"[yellow]no eval samples: tokenizer {identity['name']!r} differs from the data's")
        return None
    return tok


def _summary(console: Console, r: RunResult, out: Path) -> None:
    what = {"done": "finished", "stop_at": "stopped as asked", "interrupted": "interrupted"}[r.reason]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    console.print(
        f"[bold green]{what}[/] at step {r.step} in {r.wall_s:.0f}s: train loss {fmt(r.train_loss, '.4f')}, "
        f"val loss {fmt(r.val_loss, '.4f')}, val bpb {fmt(r.val_bpb, '.3f')} (eval at step {fmt(r.val_step, 'd')}), "
        f"{fmt(r.tokens_per_s, ',.0f')} tokens/s. "
        f"Checkpoint {out / 'checkpoint'}, metrics {out / 'metrics.jsonl'}, plot {out / 'loss.png'}"
    )
    if r.reason != "done":
        console.print("Run the same command again to continue from the checkpoint.")
