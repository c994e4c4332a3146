"""Where and in what precision a model runs: the one device and dtype policy for every command.

Training, sampling, chat, eval, export, serving and the benchmarks all call `pick_device` and
`precision`, so ``--device`` and ``--dtype`` take the same names everywhere:

* devices: ``auto`` (this process's CUDA GPU, else Apple's MPS, else the CPU), ``cpu``, ``cuda``,
  ``cuda:N``, ``mps``;
* dtypes: ``auto`` (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPUs and MPS), ``fp32``,
  ``bf16``, ``fp16`` (``float32`` / ``bfloat16`` / ``float16`` are accepted as the same names).

A CPU has no fast bf16 matmul, so ``auto`` keeps it in fp32. fp16 needs a CUDA device, and in
training a gradient scaler (`Precision.needs_grad_scaler`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from common.errors import UserError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
DTYPES = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RuntimeChoiceError(UserError, ValueError):
    """A device or dtype this machine cannot provide (one line)."""


def pick_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for `choice`; under torchrun, ``auto`` and ``cuda`` mean this rank's GPU."""
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        raise RuntimeChoiceError(f"unknown device {choice!r}: use {DEVICE_NAMES}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise RuntimeChoiceError(f"unsupported device {choice!r}: use {DEVICE_NAMES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeChoiceError(f"device {choice} requested, but this PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        if device.index >= torch.cuda.device_count():
            raise RuntimeChoiceError(f"device {choice}: this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(device)
        # fp32 matmuls left in an fp32 run (or in the optimizer's norms) use TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeChoiceError("device mps requested, but it is not available here")
    return device


def dtype_name(choice: str) -> str:
    """The canonical name (``auto``, ``fp32``, ``bf16``, ``fp16``) of a dtype choice."""
    name = _ALIASES.get(choice, choice)
    if name not in DTYPES:
        raise RuntimeChoiceError(f"unknown dtype {choice!r}: use {', '.join(DTYPES)}")
    return name


@dataclass(frozen=True)
class Precision:
    """How a model runs on a device: plain fp32, or autocast to bf16 / fp16."""

    name: str  # fp32 | bf16 | fp16
    device_type: str

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return None if self.name == "fp32" else TORCH_DTYPES[self.name]

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)


def precision(device: torch.device, choice: str = "auto") -> Precision:
    """The precision for `choice` on `device` (``auto``: bf16 > fp16 on CUDA, fp32 elsewhere)."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return Precision(resolve_dtype(device.type, choice, bf16), device.type)


def resolve_dtype(device_type: str, choice: str, bf16_supported: bool) -> str:
    """The policy itself, on names (so `train plan` applies it to a card it only knows by its size):
    ``auto`` is bf16 on CUDA cards that have it, fp16 on older ones (pre-Ampere), fp32 elsewhere."""
    name = dtype_name(choice)
    if name == "auto":
        name = ("bf16" if bf16_supported else "fp16") if device_type == "cuda" else "fp32"
    if name == "fp16" and device_type != "cuda":
        raise RuntimeChoiceError(f"dtype fp16 needs a CUDA device, not {device_type}; use bf16 or fp32")
    return name
