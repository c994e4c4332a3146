"""Who a checkpoint is: the record a run keeps of the model it started from.

A path says where a parent *was*; the run now sitting there may be another one (retrained, even with
another vocabulary). So a child records its parent's identity when it starts -- the path as given, the
step, a digest of the weights file and the tokenizer identity -- and later compares it with whatever is
at that path now (`identity_changes`). The digest is of the safetensors file's bytes, streamed, so a
checkpoint of any size costs one read and constant memory.
"""

from __future__ import annotations

import hashlib
import os

from model.io import ADAPTER_NAME, WEIGHTS_NAME, CheckpointError, read_model_info, resolve_model_dir

_CHUNK = 1 << 20


def weights_digest(ckpt_dir: str | os.PathLike) -> str:
    """sha256 (hex) of the checkpoint's ``model.safetensors`` bytes (a LoRA run's: ``adapter.safetensors``)."""
    folder = resolve_model_dir(ckpt_dir)
    path = folder / WEIGHTS_NAME
    if not path.exists() and (folder / ADAPTER_NAME).exists():  # a LoRA run: its adapters (model.adapters), whose
        path = folder / ADAPTER_NAME  # own base is checked whenever they are loaded
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weights ({e.strerror or e})") from None
    return h.hexdigest()


def checkpoint_identity(ckpt_dir: str | os.PathLike) -> dict:
    """``{"path", "step", "weights_sha256", "tokenizer"}`` of a run or checkpoint folder.

    ``path`` is `ckpt_dir` as given (what the user typed, so a report can say where to look);
    ``tokenizer`` is the tokenizer identity stored in its ``model.json``. A folder that is not a
    finished checkpoint is a `CheckpointError` (one line)."""
    info = read_model_info(ckpt_dir)
    return {
        "path": str(ckpt_dir),
        "step": info.get("step"),
        "weights_sha256": weights_digest(ckpt_dir),
        "tokenizer": info.get("tokenizer"),
    }


def identity_changes(recorded: dict, ckpt_dir: str | os.PathLike) -> list[str]:
    """What differs between a recorded identity and the checkpoint now at `ckpt_dir` (empty = the same
    checkpoint). A folder that is gone or unreadable is one entry saying so."""
    try:
        now = checkpoint_identity(ckpt_dir)
    except CheckpointError as e:
        return [f"no readable checkpoint there now ({e})"]
    changes = []
    if recorded.get("step") != now["step"]:
        changes.append(f"step {recorded.get('step')} -> {now['step']}")
    if recorded.get("weights_sha256") != now["weights_sha256"]:
        changes.append("different weights")
    old_tok, new_tok = recorded.get("tokenizer") or {}, now["tokenizer"] or {}
    if old_tok.get("fingerprint") != new_tok.get("fingerprint") or old_tok.get("len") != new_tok.get("len"):
        changes.append(f"tokenizer {old_tok.get('name')!r} -> {new_tok.get('name')!r}"
                       f" ({old_tok.get('len')} -> {new_tok.get('len')} ids)")
    return changes

