"""The run's optimizer (``optimizer=adamw``, the seed's, or ``muon``) and the learning-rate schedule.

`Optimizer` owns its parameter groups, its state and the check of a saved state against the model:

* ``adamw``: AdamW (betas from the config) on everything, weight decay on 2-D weights (matmuls,
  embeddings) only, never biases or norms; exactly the seed's optimizer, and its checkpoints keep
  the seed's format (one AdamW state dict).
* ``muon``: `torch.optim.Muon` on the hidden 2-D matrices (every `nn.Linear` weight except the
  output layer) and AdamW as above on the rest (embeddings, a tied or untied output layer, norms,
  biases), each with its own learning rate: ``muon_lr`` and ``lr``. Muon orthogonalises each
  matrix's momentum (5 Newton-Schulz steps), which suits matmul weights only; embeddings and the
  output layer are look-ups / a classifier whose rows should move independently (Keller Jordan,
  "Muon: An optimizer for hidden layers in neural networks", 2024; Moonlight, Liu et al. 2025, keep
  the same split). Defaults are Keller Jordan's: lr 0.02, momentum 0.95 with Nesterov, no weight
  decay, the update scaled by sqrt(max(1, rows/cols)) (torch's ``adjust_lr_fn="original"``).
  Both learning rates follow the one schedule (`lr_at` gives AdamW's; Muon's is scaled alike).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from common.errors import UserError
from model.io import CheckpointError
from model.lm import CausalLM
from train.config import TrainConfig

OPTIMIZERS = ("adamw", "muon")


class OptimizerError(UserError, ValueError):
    """An optimizer setting that does not fit the model."""


def hidden_matrices(model: CausalLM) -> list[torch.nn.Parameter]:
    """The 2-D weights Muon trains: every `nn.Linear` weight but the output layer's."""
    output = model.output_weight()
    return [m.weight for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m.weight is not output and m.weight.requires_grad]


def _adamw(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; decay only 2-D weights. Fused on CUDA and CPU: one pass over each parameter instead of
    about ten (on a CPU that is 13x faster for the 151,680 x C embedding, a large share of a small
    model's step)."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             fused=device.type in ("cuda", "cpu"))


class Optimizer:
    """One torch optimizer per kind of parameter (``parts``), stepped together."""

    def __init__(self, model: CausalLM, cfg: TrainConfig, device: torch.device):
        self.kind, self.cfg = cfg.optimizer, cfg
        params = [p for p in model.parameters() if p.requires_grad]
        if self.kind == "adamw":
            self.parts = {"adamw": _adamw(params, cfg, device)}
            self.lr_ratio = {"adamw": 1.0}
            return
        hidden = {id(p) for p in hidden_matrices(model)}
        if not hidden:
            raise OptimizerError("optimizer=muon trains 2-D hidden weights, and this model has none; use adamw")
        self.parts = {
            "muon": torch.optim.Muon([p for p in params if id(p) in hidden], lr=cfg.muon_lr,
                                     weight_decay=cfg.muon_weight_decay, momentum=cfg.muon_momentum, nesterov=True),
            "adamw": _adamw([p for p in params if id(p) not in hidden], cfg, device),
        }
        self.lr_ratio = {"muon": cfg.muon_lr / cfg.lr, "adamw": 1.0}

    def set_lr(self, lr: float) -> None:
        """AdamW's learning rate of this step (`lr_at`); Muon's moves in proportion."""
        for name, opt in self.parts.items():
            for group in opt.param_groups:
                group["lr"] = lr * self.lr_ratio[name]

    def state_dict(self) -> dict:
        if self.kind == "adamw":
            return self.parts["adamw"].state_dict()  # the seed's checkpoints: one AdamW state
        return {"kind": self.kind, **{name: opt.state_dict() for name, opt in self.parts.items()}}

    def load_state_dict(self, state: dict) -> None:
        """A saved state (checked by `check_state`); today's weight decay, betas and momentum win over saved ones."""
        saved = {"adamw": state} if self.kind == "adamw" else state
        for name, opt in self.parts.items():
            opt.load_state_dict(saved[name])
        for group, wd in zip(self.parts["adamw"].param_groups, (self.cfg.weight_decay, 0.0), strict=True):
            group.update(weight_decay=wd, betas=(self.cfg.beta1, self.cfg.beta2))
        if "muon" in self.parts:
            for group in self.parts["muon"].param_groups:
                group.update(weight_decay=self.cfg.muon_weight_decay, momentum=self.cfg.muon_momentum)

    def check_state(self, state: dict, where: Path) -> None:
        """Refuse a saved state of another optimizer or another model (a trainer.pt copied from another run)."""
        kind = state.get("kind", "adamw") if isinstance(state, dict) else None
        if kind != self.kind:
            raise CheckpointError(f"{where}: trainer.pt holds {kind} state, this run asks for optimizer={self.kind} "
                                  "(the optimizer cannot change on resume; start a new --out)")
        saved = {"adamw": state} if self.kind == "adamw" else state
        for name, opt in self.parts.items():
            _check_part(saved.get(name) or {}, opt, f"{where}: trainer.pt ({name})")

    def unscale(self, scaler) -> None:
        """Each part's gradients divided by the grad scaler's scale (a no-op scaler outside fp16)."""
        for opt in self.parts.values():
            scaler.unscale_(opt)

    def step(self, scaler) -> None:
        """Each part's step through the grad scaler, which skips it if fp16 gradients overflowed."""
        for opt in self.parts.values():
            scaler.step(opt)

    def zero_grad(self) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=True)


def _check_part(saved: dict, opt: torch.optim.Optimizer, where: str) -> None:
    """Every saved tensor (moments, momentum buffers) has its parameter's shape, and the counts agree."""
    order = [p for group in opt.param_groups for p in group["params"]]
    n_saved = sum(len(g.get("params", [])) for g in saved.get("param_groups", []))
    if n_saved != len(order):
        raise CheckpointError(f"{where} holds optimizer state for {n_saved} tensors, the model has {len(order)}")
    state = saved.get("state", {})
    for index, p in enumerate(order):
        for key, t in state.get(index, {}).items():
            if isinstance(t, torch.Tensor) and t.dim() > 0 and tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(f"{where}: optimizer state {key} of tensor {index} has shape {tuple(t.shape)}, the model's has "
                                      f"{tuple(p.shape)} (another model's trainer.pt?)")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine down to the floor.

    Reaches ``lr`` at step ``warmup_steps - 1`` and ``lr * min_lr_ratio`` at the last step, ``max_steps - 1``.
    """
    floor = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))
