"""Adapter checkpoints on disk: the adapters of a LoRA run and the identity of the base they belong to.

A LoRA run's ``checkpoint/`` holds ``adapter.safetensors`` (the LoRA tensors only, fp32; a few MB where
the base is hundreds) instead of ``model.safetensors``, and its ``model.json`` is the base's
(config, tokenizer, ...) plus an ``adapter`` record: the LoRA options (`model.lora.LoraOptions`) and the
base's identity (`model.identity`: its path as given, step, a digest of its weights, tokenizer). The
adapters mean nothing on another base, so every load compares that identity with the folder now at the
path and refuses a changed one in one line.

`load_model` is the one loader of a checkpoint of either kind: a full one as `model.io.load_model`; an
adapter one as its base (itself full or adapters) with the adapters merged into the weights, a plain
model that sampling, chat, serving, evaluation and the exports use unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model import io
from model.identity import identity_changes
from model.io import (
    ADAPTER_NAME,
    CheckpointError,
    read_model_info,
    resolve_model_dir,
    save_weights,
    write_model_info,
)
from model.lm import CausalLM
from model.lora import LoraError, LoraOptions, adapter_state, attach, load_adapter_state

ADAPTER_FORMAT = "zh-mini-llm-lora"


def adapter_record(info: dict) -> dict | None:
    """model.json's ``adapter`` record (options and base identity), or None for a full checkpoint."""
    record = info.get("adapter")
    return record if isinstance(record, dict) else None


def save_adapter(folder: str | os.PathLike, model: CausalLM, record: dict, tokenizer: dict, data_kind: str,
                 step: int, chat: bool) -> None:
    """Write ``adapter.safetensors`` and ``model.json`` (with `record`: options and base identity) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(adapter_state(model), folder / ADAPTER_NAME, {"format": ADAPTER_FORMAT})
    write_model_info(folder, model.config, tokenizer, data_kind, step, chat, {"adapter": record})


def checked_base(info: dict, where: str | os.PathLike) -> tuple[Path, LoraOptions]:
    """The base folder an adapter checkpoint (model.json `info`) was trained on, once it is known unchanged,
    and its LoRA options; a changed or missing base is one line."""
    record = adapter_record(info) or {}
    base = record.get("base") if isinstance(record.get("base"), dict) else {}
    if not isinstance(base.get("path"), str):
        raise CheckpointError(f"{where}: an adapter checkpoint without its base's identity; it is damaged")
    changes = identity_changes(base, base["path"])
    if changes:
        raise CheckpointError(f"{where}: its adapters were trained on {base['path']} (step {base.get('step')}), which "
                              f"has changed since: {'; '.join(changes)}. Put that model back, or train new adapters")
    try:
        return Path(base["path"]), LoraOptions.from_dict(record)
    except LoraError as e:
        raise CheckpointError(f"{where}: {e}") from None


def read_adapters(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    file = resolve_model_dir(path) / ADAPTER_NAME
    try:
        return load_file(file)
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read adapters ({e})") from e


def load_attached(path: str | os.PathLike, info: dict):
    """An adapter checkpoint as ``(base model with its adapters attached, PeftModel)``, on the CPU."""
    base_path, options = checked_base(info, path)
    model, _ = load_model(base_path)
    peft_model = attach(model.train(), options)
    try:
        load_adapter_state(model, read_adapters(path), str(resolve_model_dir(path) / ADAPTER_NAME))
    except LoraError as e:
        raise CheckpointError(str(e)) from None
    return model, peft_model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CausalLM, dict]:
    """``(model in eval mode, model.json)`` of a full or an adapter checkpoint (adapters merged in)."""
    info = read_model_info(path)
    if adapter_record(info) is None:
        return io.load_model(path, device)
    _, peft_model = load_attached(path, info)
    return peft_model.merge_and_unload().to(device).eval(), info
