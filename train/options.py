"""A stage's own settings: a small dataclass nested in the run config as ``cfg.stage``.

Each stage declares its options class (`StageOptions` subclass: fields with defaults, `RANGES` for the
numbers, `check_options` for the rest); only a run of that stage records them in its train_config.json.
An option several stages share is a *group*: a dataclass declared once, here or in its own module,
with ``@shared("sft", "dpo")``; every named stage's options then have its fields (LoRA's ``lora_rank``
on sft and dpo, a distillation weight on pretrain and sft). `options_class` composes a stage's own
class with its groups; the command line sets any of them with ``--set name=value``
(`train.overrides`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cache
from typing import ClassVar


class OptionsError(ValueError):
    """A stage setting out of range, or one the run does not use."""


@dataclass
class StageOptions:
    """The base of every stage's options and of every shared group: no fields."""

    STAGE: ClassVar[str] = ""  # the stage these options belong to (set on the composed class)
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {}  # a number's sane bounds, inclusive

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def check(self, set_fields: tuple[str, ...] = ()) -> None:
        """Raise `OptionsError` for a value out of its range, or (`check_options`) one the run cannot use.
        `set_fields` are those the user set (a setting the run ignores is an error only when set)."""
        for klass in type(self).__mro__:
            for name, (low, high) in vars(klass).get("RANGES", {}).items():
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or not low <= value <= high:
                    raise OptionsError(f"{name} must be from {low:g} to {high:g}, got {value!r}")
            own_check = vars(klass).get("check_options")
            if own_check is not None:
                own_check(self, set_fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SHARED: list[tuple[type[StageOptions], tuple[str, ...]]] = []  # (group, the stages that have it)


def shared(*stages: str):
    """Class decorator: the dataclass `group` (a `StageOptions` subclass) is part of each stage in `stages`."""

    def add(group: type[StageOptions]) -> type[StageOptions]:
        SHARED.append((group, stages))
        return group

    return add


def options_class(stage: str, own: type[StageOptions]) -> type[StageOptions]:
    """The options of stage `stage`: its own class and every shared group that names it."""
    return _compose(stage, own, tuple(group for group, names in SHARED if stage in names))


@cache
def _compose(stage: str, own: type[StageOptions], groups: tuple[type[StageOptions], ...]) -> type[StageOptions]:
    name = "".join(part.capitalize() for part in stage.replace("-", "_").split("_")) + "Options"
    return dataclasses.make_dataclass(name, [], bases=(*groups, own), namespace={"STAGE": stage})
