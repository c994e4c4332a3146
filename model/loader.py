"""A checkpoint ready to generate with: the model, its own tokenizer (checked), the stop ids for its kind.

Only ``model.json`` and ``model.safetensors`` are read (`model.io`), so loading a downloaded
checkpoint never unpickles anything. The tokenizer is loaded by the name recorded in ``model.json``
and must have the very ids the model was trained with (`prep.tokenizer.check_identity`).

A model whose last training data was SFT (``data_kind == "sft"``) is a chat model: its prompts are
rendered with the training chat template and it stops at ``<|im_end|>`` (or ``<|endoftext|>``). A
base model continues text and stops at ``<|endoftext|>``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from model.generate import Engine
from model.gpt import GPT
from model.io import CheckpointError, load_model, read_model_info
from prep.tokenizer import Tokenizer, TokenizerError, check_identity, load_tokenizer


def pick_device(choice: str = "auto") -> torch.device:
    """``auto``: CUDA if available, then Apple's MPS, else the CPU. Explicit choices are checked."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as e:
        raise ValueError(f"unknown device {choice!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested, but this PyTorch has no usable CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps requested, but it is not available")
    return device


def autocast_for(device: torch.device, dtype: str = "auto"):
    """A context factory: bf16 autocast on GPUs that have it (``auto``), fp32 otherwise or if asked."""
    if dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"dtype must be auto, fp32 or bf16, not {dtype!r}")
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if dtype == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def stop_ids_for(tokenizer: Tokenizer, chat: bool) -> list[int]:
    return [tokenizer.im_end_id, tokenizer.eot_id] if chat else [tokenizer.eot_id]


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    info: dict  # model.json
    engine: Engine

    @property
    def chat(self) -> bool:
        return self.info.get("data_kind") == "sft"


def load_tokenizer_for(info: dict, where: str) -> Tokenizer:
    """The tokenizer a checkpoint names, refused unless its ids are exactly the ones it was trained with."""
    identity = info.get("tokenizer") or {}
    name = identity.get("name")
    if not name:
        raise CheckpointError(f"{where}: model.json names no tokenizer")
    try:
        tok = load_tokenizer(name)
        check_identity(identity, tok, where)
    except (TokenizerError, OSError) as e:
        raise CheckpointError(str(e)) from None
    return tok


def load_on_device(path: str | os.PathLike, device: str = "auto", dtype: str = "auto"):
    """``(model in eval mode, model.json, autocast factory)`` for inference or evaluation on `device`."""
    try:
        dev = pick_device(device)
        autocast = autocast_for(dev, dtype)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model, info = load_model(path, dev)
    return model, info, autocast


def load_for_generation(path: str | os.PathLike, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a run or checkpoint folder for sampling, chat or benchmarks; raises `CheckpointError`."""
    tok = load_tokenizer_for(read_model_info(path), str(path))
    model, info, autocast = load_on_device(path, device, dtype)
    chat = info.get("data_kind") == "sft"
    engine = Engine(model, len(tok), stop_ids_for(tok, chat), autocast)
    return LoadedModel(model, tok, info, engine)
