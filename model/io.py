"""Model weights on disk: ``model.safetensors`` + ``model.json``, the pair every consumer reads.

Checkpoints, sampling, chat and export all go through `save_model` / `load_model`. Weights are
safetensors (never pickle, so loading a downloaded checkpoint cannot run code); ``model.json`` holds
the `GPTConfig`, the identity of the tokenizer the model was trained with (see
`prep.tokenizer.Tokenizer.identity`), the kind of data it last trained on and the step.

A *run folder* (``runs/pretrain``) keeps its latest weights in ``checkpoint/``; every function here
accepts either the run folder or the checkpoint folder itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.gpt import GPT, GPTConfig

WEIGHTS_NAME = "model.safetensors"
INFO_NAME = "model.json"
CHECKPOINT_DIR = "checkpoint"
FORMAT = "zh-mini-llm-gpt"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A model folder is missing, incomplete or does not fit what it is used with."""


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The folder holding ``model.safetensors``: `path` itself, or ``path/checkpoint`` for a run folder."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_DIR):
        if (candidate / INFO_NAME).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint folder")
    raise CheckpointError(f"{path}: no {INFO_NAME} here or in {path / CHECKPOINT_DIR}; not a finished checkpoint")


def save_model(folder: str | os.PathLike, model: GPT, tokenizer: dict, data_kind: str, step: int,
               extra: dict | None = None) -> None:
    """Write the weights (fp32, contiguous, the tied output layer once) and ``model.json`` into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"format": FORMAT})
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "tokenizer": tokenizer,
        "data_kind": data_kind,
        "step": step,
        **(extra or {}),
    }
    (folder / INFO_NAME).write_text(json.dumps(info, ensure_ascii=False, indent=2, sort_keys=True) + "\n", "utf-8")


def read_model_info(path: str | os.PathLike) -> dict:
    """``model.json`` of a run or checkpoint folder, checked for format and a valid config."""
    folder = resolve_model_dir(path)
    info_path = folder / INFO_NAME
    try:
        info = json.loads(info_path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{info_path}: not valid JSON ({e})") from e
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{info_path}: format {info.get('format')!r} v{info.get('format_version')}, "
            f"expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    try:
        GPTConfig.from_dict(info["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{info_path}: bad model config ({e})") from e
    return info


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    folder = resolve_model_dir(path)
    try:
        return load_file(folder / WEIGHTS_NAME, device=str(device))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: cannot read weights ({e})") from e


def load_weights_into(model: GPT, path: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into `model`, refusing any missing, extra or differently shaped tensor."""
    state = load_state_dict(path)
    own = model.state_dict()
    where = resolve_model_dir(path) / WEIGHTS_NAME
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"{where}: tensors do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, t in state.items():
        if t.shape != own[name].shape:
            raise CheckpointError(
                f"{where}: {name} has shape {tuple(t.shape)}, the model expects {tuple(own[name].shape)}"
            )
    model.load_state_dict(state)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Build the GPT a checkpoint describes and load its weights: ``(model in eval mode, model.json)``."""
    info = read_model_info(path)
    model = GPT(GPTConfig.from_dict(info["config"]))
    load_weights_into(model, path)
    return model.to(device).eval(), info
