"""A run that continues a model keeps its function: a fine-tune from --init, and a resumed run.

A model config declares its training knobs (`model.lm.ModelConfig.KNOBS`: dropout, loss chunking, and
for rotary architectures the block size); those come from this run's config. Every other field (the
architecture, the shape, ``rope_theta``, the norms' epsilon, ...) is the recorded model's: a preset's
value never replaces it, and a value set on the command line that differs from it is refused in one
line, so a fine-tune never silently becomes another function than the model it starts from.
"""

from __future__ import annotations

import dataclasses

from model.archs import config_from_dict
from model.io import CheckpointError
from model.lm import ModelConfig
from train.config import TrainConfig


def shape_of(model: ModelConfig) -> dict:
    """What a checkpoint's model must match to continue or start from it: architecture, shape, vocabulary."""
    return {"arch": model.arch, **{k: getattr(model, k) for k in model.SHAPE_FIELDS}, "vocab_size": model.vocab_size}


def inherit_model(model: ModelConfig, recorded: dict, set_fields: tuple[str, ...], where: str) -> ModelConfig:
    """The model a run continuing `recorded` (a model.json config) trains: `recorded` with `model`'s knobs.

    A field the user set (`set_fields`) that is not a knob and differs from `recorded` is a `CheckpointError`
    naming it (`where` says which model: ``runs/pretrain (--init)``, or the checkpoint being resumed)."""
    try:
        rec = config_from_dict(recorded)
    except ValueError as e:
        raise CheckpointError(f"{where}: bad model config ({e})") from None
    function = rec.field_names() - {"vocab_size", *rec.KNOBS}  # vocab_size: the data's, checked on its own
    if "arch" in set_fields and model.arch != rec.arch:
        raise CheckpointError(f"{where}: a model of arch {rec.arch}; --set arch={model.arch} would train another "
                              "architecture (drop it: the architecture comes from that model)")
    if model.arch == rec.arch:
        changed = [k for k in set_fields if k in function and getattr(model, k) != getattr(rec, k)]
        if changed:
            k = changed[0]
            raise CheckpointError(
                f"{where}: its model has {k}={getattr(rec, k)!r}; --set {k}={getattr(model, k)!r} would change the "
                f"function it continues (drop the setting; a run may change only {', '.join(rec.KNOBS)})")
    return dataclasses.replace(rec, **{k: getattr(model, k) for k in rec.KNOBS if hasattr(model, k)})


def config_changes(before: dict | None, now: TrainConfig) -> list[str]:
    """``lr 0.001 -> 0.0005``, ``dropout 0.0 -> 0.1``, ...: the settings (training fields, the stage's, the
    model's knobs) that differ from a recorded config of the same stage."""
    try:
        old = TrainConfig.from_dict(before, now.stage_name)
    except ValueError:  # a damaged train_config.json: nothing to compare with (the run itself is checked)
        return []
    parts = [(old.to_dict(), now.to_dict(), {"set_fields", "model", "stage"}),
             (old.stage.to_dict(), now.stage.to_dict(), set()),
             (old.model.to_dict(), now.model.to_dict(), {"vocab_size"})]
    return [f"{k} {a.get(k)} -> {b[k]}" for a, b, skip in parts for k in b if k not in skip and a.get(k) != b[k]]
