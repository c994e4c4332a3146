"""One optimizer step: the model, its optimizer, precision, compilation and DDP wrapping.

Shared by the training loop and ``bench/train.py``, so the benchmark times exactly the step that
training runs. One step = `accumulation` micro-batches on each of `world_size` ranks. Each micro-
batch's loss is the SUM of its per-token losses times ``world_size / N``, N being the number of
target tokens in the whole step (all micro-batches, all ranks, counted on the host and all-reduced
before the step): DDP averages gradients over ranks, so the gradient is exactly that of the mean
over the step's target tokens however the batch is split, with masks (SFT) or without. Gradients
are synchronised only on the last micro-batch (DDP `no_sync`), and nothing comes back to the host
until the whole step's loss, gradient norm and stop votes do, in one transfer.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from model.lm import CausalLM
from model.runtime import Precision
from train.config import TrainConfig
from train.data import StepBatch
from train.dist import Dist
from train.optim import Optimizer


@dataclass
class StepStats:
    loss: float  # mean loss per target token over the whole step (all ranks)
    n_targets: float
    grad_norm: float  # before clipping
    stop_votes: float  # ranks that were asked to stop (Ctrl-C / SIGTERM)
    metrics: dict[str, float] = field(default_factory=dict)  # the stage's metrics, means over the step's count


class Stepper:
    """Runs optimizer steps of `model` on the batches of a `StepLoader`."""

    def __init__(self, model: CausalLM, cfg: TrainConfig, d: Dist, precision: Precision, stage):
        self.model, self.cfg, self.d, self.precision, self.stage = model, cfg, d, precision, stage
        device = d.device
        self.compiled = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
        self.optimizer = Optimizer(model, cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.needs_grad_scaler)
        # compile first, then DDP (nanoGPT's order): DDP's gradient hooks stay on the real parameters
        fwd = torch.compile(model) if self.compiled else model
        self.fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None) if d.enabled else fwd

    def autocast(self):
        return self.precision.autocast()

    def load_state(self, state: dict) -> None:
        """Optimizer and scaler state from a checkpoint (checked by `Optimizer.check_state`)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

    def forward_backward(self, batch: StepBatch, lr: float, stop_requested: bool = False) -> StepStats:
        """Accumulate the step's gradients and clip them; `apply()` then updates the weights."""
        d, device = self.d, self.d.device
        self.optimizer.set_lr(lr)
        # torch.full fills on the device: unlike torch.tensor(x, device=...), no synchronising host copy
        count = d.all_reduce_sum(torch.full((), float(batch.n_targets), device=device))
        scale = d.world_size / count.clamp(min=1.0)
        loss_sum = torch.zeros((), device=device)
        metric_sums = torch.zeros(len(self.stage.metrics), device=device)
        for i, micro in enumerate(batch.micro):
            sync = not d.enabled or i == len(batch.micro) - 1
            with contextlib.nullcontext() if sync else self.fwd.no_sync():
                with self.autocast():
                    micro_sum, metrics = self.stage.micro_loss(self.fwd, micro)
                self.scaler.scale(micro_sum * scale).backward()
            loss_sum += micro_sum.detach()
            if metrics:
                metric_sums += torch.stack([metrics[name].detach().float() for name in self.stage.metrics])
        self.optimizer.unscale(self.scaler)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        votes = d.all_reduce_sum(torch.cat([torch.stack([loss_sum, torch.full((), float(stop_requested),
                                                                               device=device)]), metric_sums]))
        total, stop_votes, *sums, n, gnorm = torch.cat([votes, count.view(1), grad_norm.view(1).float()]).tolist()
        metrics = {name: s / max(n, 1.0) for name, s in zip(self.stage.metrics, sums, strict=True)}
        return StepStats(total / max(n, 1.0), n, gnorm, stop_votes, metrics)

    def divergence(self, stats: StepStats) -> str | None:
        """Why this step must not be applied, or None. A non-finite loss always diverged; a non-finite
        gradient norm too, except under fp16's gradient scaler, which skips such steps by design."""
        if not math.isfinite(stats.loss):
            return f"the loss is {stats.loss}"
        if not math.isfinite(stats.grad_norm) and not self.scaler.is_enabled():
            return f"the gradient norm is {stats.grad_norm} (loss {stats.loss:.4f})"
        return None

    def apply(self) -> None:
        self.optimizer.step(self.scaler)
        self.scaler.update()
        self.optimizer.zero_grad()
