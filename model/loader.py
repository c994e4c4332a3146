"""A checkpoint ready to use on a device: the model, its precision, and for generation its own tokenizer.

Only ``model.json`` and ``model.safetensors`` are read (`model.io`; a LoRA run's checkpoint: its base's,
and ``adapter.safetensors``, merged in by `model.adapters`), so loading a downloaded checkpoint
never unpickles anything. The tokenizer is the one ``model.json`` records, loaded from local files
only (the checkpoint's own copy first: `model.tokenizer_files`) and checked to have the very ids the model
was trained with.
A chat model (`model.io.is_chat`) gets ChatML prompts and stops at ``<|im_end|>``; a base model
continues text and stops at ``<|endoftext|>`` (`model.io.stop_ids`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from model.adapters import load_model
from model.archs.gpt2 import GPT
from model.generate import Engine
from model.io import is_chat, read_model_info, stop_ids
from model.runtime import Precision, pick_device, precision
from model.tokenizer_files import checkpoint_tokenizer
from prep.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    info: dict  # model.json
    engine: Engine

    @property
    def chat(self) -> bool:
        return is_chat(self.info)


def load_tokenizer_for(info: dict, where: str) -> Tokenizer:
    """The checkpoint's tokenizer (its own copy, or the one it names: `model.tokenizer_files`), refused unless
    its ids are exactly the ones it was trained with."""
    return checkpoint_tokenizer(info, where)


def load_on_device(path: str | os.PathLike, device: str = "auto", dtype: str = "auto"
                   ) -> tuple[GPT, dict, Precision]:
    """``(model in eval mode, model.json, precision)`` for inference or evaluation on `device`.

    Raises `CheckpointError`, or `RuntimeChoiceError` for a device or dtype this machine lacks.
    """
    dev = pick_device(device)
    prec = precision(dev, dtype)
    model, info = load_model(path, dev)
    return model, info, prec


def load_for_generation(path: str | os.PathLike, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a run or checkpoint folder for sampling, chat, serving or benchmarks; raises `CheckpointError`."""
    tok = load_tokenizer_for(read_model_info(path), str(path))
    model, info, prec = load_on_device(path, device, dtype)
    engine = Engine(model, len(tok), stop_ids(tok, is_chat(info)), prec.autocast)
    return LoadedModel(model, tok, info, engine)
