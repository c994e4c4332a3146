"""Model weights on disk, and the layout of a run folder: the names every consumer reads.

Checkpoints, sampling, chat, export and serving all go through `save_model` / `load_model`. Weights are
safetensors (never pickle, so loading a downloaded checkpoint cannot run code); ``model.json`` holds
the model's config (its ``arch`` says which architecture, `model.arch`), the identity of the tokenizer the model was trained with (see
`prep.tokenizer.Tokenizer.identity`), the kind of data it last trained on and the step. Before any
memory is allocated, the config is checked for sane sizes and against the shapes stored in the
weights file, so a damaged or hostile ``model.json`` is one line, not a 512 GB allocation.

A *run folder* (``runs/pretrain``, see `RunFolder`) keeps its latest weights in ``checkpoint/``; every
function here accepts either the run folder or the checkpoint folder itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.outputs import JSONFileError, read_json
from model.archs import build, config_from_dict
from model.lm import CausalLM, ModelConfig
from prep.tokenfile import KINDS as DATA_KINDS

WEIGHTS_NAME = "model.safetensors"
ADAPTER_NAME = "adapter.safetensors"  # a LoRA run's checkpoint holds this instead (model.adapters)
INFO_NAME = "model.json"
CHECKPOINT_DIR = "checkpoint"
FORMAT = "zh-mini-llm-gpt"
FORMAT_VERSION = 1


class CheckpointError(UserError, ValueError):
    """A model folder is missing, incomplete or does not fit what it is used with."""


class RunFolder:
    """A training run's folder and the name of everything in it (the one place for these names)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT_DIR
        self.metrics = self.path / "metrics.jsonl"
        self.plot = self.path / "loss.png"
        self.export = self.path / "hf"  # the default Hugging Face export
        self.harness = self.path / "harness"  # lm-eval results (`model.measure.harness`)
        self.tensorboard = self.path / "tb"  # `train --log tensorboard`
        self.wandb_id = self.path / "wandb_id.txt"  # `train --log wandb`: a resumed run continues the same one

    @classmethod
    def of(cls, path: str | os.PathLike) -> RunFolder:
        """The run folder of `path`: a run folder, or the ``checkpoint/`` folder inside one."""
        path = Path(path)
        return cls(path.parent if path.name == CHECKPOINT_DIR else path)

    def eval_result(self, data: str | os.PathLike, split: str) -> Path:
        return self.path / f"eval_{Path(data).resolve().name}_{split}.json"


CHAT_TEMPLATE = "chatml"  # the one template chat models are trained with (prep.chat_template)


def is_chat(info: dict) -> bool:
    """A chat model (ChatML prompts, stops at <|im_end|>): model.json's ``chat``; a checkpoint written
    before that field existed is a chat model when its last training data was SFT."""
    chat = info.get("chat")
    return chat if isinstance(chat, bool) else info.get("data_kind") == "sft"


def stop_ids(tokenizer, chat: bool) -> list[int]:
    """Ids that end a generation: <|im_end|> (then <|endoftext|>) for a chat model, <|endoftext|> for a base one."""
    return [tokenizer.im_end_id, tokenizer.eot_id] if chat else [tokenizer.eot_id]


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The folder holding ``model.safetensors``: `path` itself, or ``path/checkpoint`` for a run folder."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_DIR):
        if (candidate / INFO_NAME).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint folder")
    raise CheckpointError(f"{path}: no {INFO_NAME} here or in {path / CHECKPOINT_DIR}; not a finished checkpoint")


def save_weights(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` that reports a failed write (a full disk) as the OSError it is, so
    the folder being built can become one line and leave the previous one (safetensors raises its own
    error type, with the system's error number in its message)."""
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code:
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
        raise


def save_model(folder: str | os.PathLike, model: CausalLM, tokenizer: dict, data_kind: str, step: int,
               chat: bool | None = None, extra: dict | None = None) -> None:
    """Write the weights (fp32, contiguous, the tied output layer once) and ``model.json`` into `folder`.

    `chat` (a chat model, trained on ChatML) is recorded as given; None means a chat model when the data
    was SFT dialogs (what tests and benchmarks that write a model by hand want)."""
    chat = data_kind == "sft" if chat is None else chat
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_weights(state, folder / WEIGHTS_NAME, {"format": FORMAT})
    write_model_info(folder, model.config, tokenizer, data_kind, step, chat, extra)


def write_model_info(folder: Path, config: ModelConfig, tokenizer: dict, data_kind: str, step: int, chat: bool,
                     extra: dict | None = None) -> None:
    """``model.json``: the config, tokenizer identity, data kind, chat template and step (and `extra`)."""
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "tokenizer": tokenizer,
        "data_kind": data_kind,
        "chat": chat,
        "template": CHAT_TEMPLATE if chat else None,
        "step": step,
        **(extra or {}),
    }
    (folder / INFO_NAME).write_text(json.dumps(info, ensure_ascii=False, indent=2, sort_keys=True) + "\n", "utf-8")


def read_model_info(path: str | os.PathLike) -> dict:
    """``model.json`` of a run or checkpoint folder, checked for format, kind and a sane config."""
    folder = resolve_model_dir(path)
    info_path = folder / INFO_NAME
    try:
        info = read_json(info_path)
    except JSONFileError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        got = f"{info.get('format')!r} v{info.get('format_version')}" if isinstance(info, dict) else "not an object"
        raise CheckpointError(f"{info_path}: format {got}, expected {FORMAT!r} v{FORMAT_VERSION}")
    if info.get("data_kind") not in DATA_KINDS:
        raise CheckpointError(f"{info_path}: data_kind {info.get('data_kind')!r}, expected one of {DATA_KINDS}")
    try:  # the config's sane ranges (`model.lm.ModelConfig.RANGES`) before anything is allocated
        config = config_from_dict(info["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{info_path}: bad model config ({e})") from e
    tok = info.get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("len"), int) and tok["len"] > config.vocab_size:
        raise CheckpointError(f"{info_path}: the tokenizer has {tok['len']:,} ids but the model only "
                              f"{config.vocab_size:,} rows; the checkpoint is damaged")
    return info


def _check_stored_shapes(model_dir: Path, config: ModelConfig) -> None:
    """Compare the weights file's tensor shapes with the config before building (allocating) the model."""
    expected = config.expected_shapes()
    path = model_dir / WEIGHTS_NAME
    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            stored = {name: f.get_slice(name).get_shape() for name in expected if name in keys}
            n_blocks = len({i for k in keys if (i := config.block_index(k)) is not None})
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from e
    for name, shape in expected.items():
        if stored.get(name) != shape:
            raise CheckpointError(f"{path}: {name} has shape {stored.get(name)}, model.json implies {shape}")
    if n_blocks != config.n_layer:
        raise CheckpointError(f"{path}: {n_blocks} layers stored, model.json says n_layer = {config.n_layer}")


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    folder = resolve_model_dir(path)
    try:
        return load_file(folder / WEIGHTS_NAME, device=str(device))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: cannot read weights ({e})") from e


def load_weights_into(model: CausalLM, path: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into `model`, refusing any missing, extra, misshapen or non-finite tensor."""
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
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: {name} holds NaN or infinite values (a diverged run?)")
    model.load_state_dict(state)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CausalLM, dict]:
    """Build the model a checkpoint describes and load its weights: ``(model in eval mode, model.json)``."""
    info = read_model_info(path)
    config = config_from_dict(info["config"])
    _check_stored_shapes(resolve_model_dir(path), config)
    model = build(config)
    load_weights_into(model, path)
    return model.to(device).eval(), info
