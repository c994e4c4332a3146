"""The run folder's ``checkpoint/``: everything needed to continue a run exactly, written atomically.

    OUT/checkpoint/
      model.safetensors   weights (fp32), read by sampling, chat, export and `--init`
      model.json          model config, tokenizer identity (from the data's meta.json), data kind, step
      trainer.pt          optimizer + grad-scaler state and step (loaded with weights_only=True)
      train_config.json   the full TrainConfig and how the run was started (stage, data, init)

The sampler and the dropout RNG are pure functions of (seed, step, rank), so the step *is* their
state. A new checkpoint is built in ``OUT/.checkpoint.tmp`` and swapped in by renames, so a crash at
any moment leaves the previous checkpoint or the new one, never a mix (a crash between the two
renames leaves ``.checkpoint.old``, which `find_checkpoint` puts back).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from model.gpt import GPT
from model.io import CHECKPOINT_DIR, CheckpointError, save_model

TRAINER_STATE = "trainer.pt"
TRAIN_CONFIG = "train_config.json"


def find_checkpoint(out: Path) -> Path | None:
    """The run's finished checkpoint folder, or None for a fresh run."""
    ckpt, old = out / CHECKPOINT_DIR, out / f".{CHECKPOINT_DIR}.old"
    if not ckpt.exists() and old.exists():  # interrupted between the two renames of a save
        old.rename(ckpt)
    return ckpt if ckpt.exists() else None


def save_checkpoint(out: Path, model: GPT, optimizer: torch.optim.Optimizer, scaler, step: int,
                    tokenizer: dict, data_kind: str, run_info: dict) -> Path:
    """Write the checkpoint for `step` (rank 0 only) and swap it in atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tmp, final, old = out / f".{CHECKPOINT_DIR}.tmp", out / CHECKPOINT_DIR, out / f".{CHECKPOINT_DIR}.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(tmp, model, tokenizer, data_kind, step)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    torch.save(state, tmp / TRAINER_STATE)
    (tmp / TRAIN_CONFIG).write_text(json.dumps(run_info, ensure_ascii=False, indent=2, sort_keys=True) + "\n", "utf-8")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def load_trainer_state(ckpt: Path) -> dict:
    """Optimizer/scaler state and step, without unpickling arbitrary objects."""
    path = ckpt / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def read_run_info(ckpt: Path) -> dict:
    path = ckpt / TRAIN_CONFIG
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def check_tokenizer(expected: dict, got: dict, what: str, where: str) -> None:
    """Refuse to pair a model with data tokenized differently (compares vocabulary fingerprints)."""
    if expected.get("fingerprint") != got.get("fingerprint") or expected.get("len") != got.get("len"):
        raise CheckpointError(
            f"{where}: {what} was made with tokenizer {expected.get('name')!r} (fingerprint "
            f"{expected.get('fingerprint')}, {expected.get('len')} ids), but the data uses {got.get('name')!r} "
            f"(fingerprint {got.get('fingerprint')}, {got.get('len')} ids)"
        )


def check_shape(model_config: dict, wanted: dict, where: str) -> None:
    """Refuse a checkpoint whose model shape differs from the one this run asks for."""
    diffs = [f"{k}={model_config.get(k)} (run wants {v})" for k, v in wanted.items() if model_config.get(k) != v]
    if diffs:
        raise CheckpointError(f"{where}: checkpoint model has {', '.join(diffs)}")

