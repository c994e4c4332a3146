"""``--set key=value``: one setting of the run, typed from its dataclass field, wherever it lives.

A key names a training field (`train.config.TrainConfig`), a setting of the run's stage (``cfg.stage``,
`train.options`) or a field of the model's architecture (``cfg.model``; ``arch=...`` picks the
architecture, and any field of it can follow), except the vocabulary size, which always comes from the
data's tokenizer. A key the run does not have is a one-line error naming where it belongs: a field of
another architecture, or a setting of another stage (``dpo_beta`` on pretraining).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import fields

from model.archs import ARCHS, ArchError, config_for, get
from model.lm import ModelConfig
from train import stages
from train.config import AUTO, TrainConfig, validate
from train.lora_options import with_lora_lr


def with_values(config: TrainConfig, values: dict) -> TrainConfig:
    """`config` with `values` applied: training fields to it, the stage's settings to ``config.stage``, the rest
    to ``config.model`` (of the architecture ``values["arch"]`` names, if it names one). Not validated."""
    own, options = _train_fields(), set(config.stage.field_names())
    model_values = {k: v for k, v in values.items() if k not in own and k not in options}
    arch = model_values.pop("arch", config.model.arch)
    model = config_for(arch, config.model, model_values)  # ValueError for a value or combination it cannot build
    stage = dataclasses.replace(config.stage, **{k: v for k, v in values.items() if k in options})
    return dataclasses.replace(config, model=model, stage=stage, **{k: v for k, v in values.items() if k in own})


def _train_fields() -> dict[str, dataclasses.Field]:
    # a recipe is more than its name: --recipe sets it with its values (train.presets.recipe_config)
    return {f.name: f for f in fields(TrainConfig) if f.name not in ("model", "stage", "set_fields", "recipe")}


def _settable_fields(config: TrainConfig, arch_config: type[ModelConfig]) -> dict[str, dataclasses.Field]:
    """The fields --set can change: the training fields, the stage's settings and the architecture's fields."""
    return (_train_fields() | {f.name: f for f in fields(config.stage)}
            | {f.name: f for f in fields(arch_config) if f.name != "vocab_size"})


_TYPES = {"int": int, "int | str": int, "float": float, "bool": bool, "str": str}


def _parse(field: dataclasses.Field, text: str):
    if field.name == "micro_batch_size" and text.strip().lower() == AUTO:
        return AUTO
    if isinstance(field.type, str) and field.type.startswith("tuple["):  # a list setting: a,b,c
        return tuple(part.strip() for part in text.split(",") if part.strip())
    kind = field.type if isinstance(field.type, type) else _TYPES.get(field.type, str)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if kind is int:
        value = float(text)  # accepts 1e4
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if kind is float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    return text


def apply_overrides(config: TrainConfig, assignments: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``key=value`` strings, each value typed from its dataclass field. Unknown keys are errors.

    The keys join `set_fields`, so the run knows what the user chose.
    """
    target = _target_arch(config, assignments)
    settable = _settable_fields(config, target)
    changes = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        if key == "vocab_size":
            raise ValueError(f"--set {item!r}: vocab_size comes from the data's tokenizer and cannot be set")
        if key not in settable:
            raise ValueError(f"--set {item!r}: {_not_settable(config, target, key, settable)}")
        try:
            changes[key] = _parse(settable[key], text)
        except ValueError as e:
            raise ValueError(f"--set {item!r}: {e}") from None
    set_fields = tuple(dict.fromkeys([*config.set_fields, *changes]))
    return with_lora_lr(validate(dataclasses.replace(with_values(config, changes), set_fields=set_fields)))


def _not_settable(config: TrainConfig, target: type[ModelConfig], key: str, settable: dict) -> str:
    """Why `key` is not a setting of this run: another architecture's field, another stage's setting, or none."""
    if key in _any_model_field():
        return (f"arch {target.arch_name()} has no field {key!r} (its model fields: "
                f"{', '.join(sorted(target.field_names() - {'arch', 'vocab_size'}))})")
    owners = [s.name for s in stages.STAGES.values() if key in s.option_class().field_names()]
    if owners:
        return f"{key} is a setting of `train {' / '.join(owners)}`, not of `train {config.stage_name}`"
    return f"unknown field {key!r}; fields are {', '.join(settable)}"


def _target_arch(config: TrainConfig, assignments) -> type[ModelConfig]:
    """The config class of the architecture after `assignments` (the last ``arch=`` among them wins)."""
    name = config.model.arch
    for item in assignments:
        key, sep, text = item.partition("=")
        if sep and key.strip() == "arch":
            name = text.strip()
    try:
        return get(name).config
    except ArchError as e:
        raise ValueError(f"--set arch={name}: {e}") from None


def _any_model_field() -> set[str]:
    return set().union(*(a.config.field_names() for a in ARCHS.values()))
