"""Presets are sizes: a named model size and schedule, over which a stage's overlay applies by itself.

A run's config is composed in layers (`compose`): the size preset, the stage's overlay for that size
(`train.stage.LMStage.overlay`: SFT's and DPO's learning rates and schedules), any further layers (a
recipe's bundle of architecture, optimizer and rates), then the command line's ``--set``
(`train.overrides.apply_overrides`). The architecture is a setting (``--set arch=qwen3``), not a preset.
Old preset names (``tiny-sft``, ``qwen3-tiny``, ``qwen3-mini-dpo``, ...) are aliases of a size (and an
architecture): `resolve` says what they mean now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from common.recipes import DEFAULT_RECIPE, train_overlay
from train import stages
from train.config import TrainConfig
from train.overrides import with_values

# The dataclass defaults are the `mini` size, the model of record: GPT-2 small's body (85M) with the Qwen2
# vocabulary (+117M tied embedding) = 202M parameters; 5000 steps x 65,536 tokens = 328M tokens, about one
# epoch of the full wiki_zh_2019 release.
_MINI: dict = {}

# `make demo`: a few minutes on a 2-core CPU. The 151,680-wide output layer costs ~116 MFLOP per token
# whatever the body, so a 2x128 body adds almost nothing and the CPU manages ~500 tokens/s: 400 steps of
# 4 x 64 tokens is ~100k tokens, about ten passes over the bundled sample. With that little data, 1e-3
# learns faster per token than 3e-3 (measured on sample_data; 3e-3 suits the 1.4M-token wiki sample).
_TINY = dict(
    n_layer=2, n_head=4, n_embd=128, block_size=64, batch_size=4, micro_batch_size=4,
    max_steps=400, lr=1e-3, warmup_steps=20, eval_every=100, eval_blocks=16, ckpt_every=200,
    sample_tokens=24, log_every=1,
)

SIZES: dict[str, dict] = {"mini": _MINI, "tiny": _TINY}
PRESETS = SIZES  # the name of old

# Old names: NAME-sft / NAME-dpo (the stage's overlay now applies by itself) and qwen3-NAME[-stage] (the
# modern recipe's architecture, now --set arch=qwen3; qwen3's defaults give the seed's matmul weights per
# layer, so the same depth and width cost the same FLOPs per token).
ALIASES: dict[str, tuple[str, dict]] = {
    f"{arch}{size}{suffix}": (size, {"arch": "qwen3"} if arch else {})
    for size in ("tiny", "mini") for arch in ("", "qwen3-") for suffix in ("", "-sft", "-dpo")
    if arch or suffix
}


class PresetError(ValueError):
    """A preset name that is neither a size nor an old name of one."""


def resolve(name: str) -> tuple[str, dict, str | None]:
    """``(size, values the name adds, a note saying what an old name means now or None)``."""
    if name in SIZES:
        return name, {}, None
    if name in ALIASES:
        size, extra = ALIASES[name]
        arch = " --set arch=qwen3" if extra else ""
        return size, dict(extra), (f"preset {name} is now --preset {size}{arch} (a stage's own rates apply by "
                                   "themselves)")
    raise PresetError(f"unknown preset {name!r}; sizes are {', '.join(SIZES)} (the architecture is --set arch=..., "
                      f"old names such as {next(iter(ALIASES))} still work)")


def compose(name: str, stage: str = "pretrain", layers: Iterable[Mapping] = ()) -> TrainConfig:
    """The config of a `stage` run at size `name`: the size, the stage's overlay for it, an alias's
    architecture, then each of `layers` (e.g. a recipe's values for this size), later layers winning.
    Nothing here counts as set on the command line (`TrainConfig.set_fields`)."""
    size, extra, _ = resolve(name)
    cfg = TrainConfig().for_stage(stage)
    for values in (SIZES[size], stages.get(stage).overlay_for(size), extra, *layers):
        cfg = with_values(cfg, dict(values))
    return cfg


def preset(name: str, stage: str = "pretrain", recipe: str = DEFAULT_RECIPE) -> TrainConfig:
    """Size `name` (or an old name of one) for a run of `stage`, its overlay applied, then `recipe`'s values."""
    return recipe_config(name, stage, recipe)


def recipe_config(name: str, stage: str = "pretrain", recipe: str = DEFAULT_RECIPE) -> TrainConfig:
    """`compose` with the recipe's values for this size and stage as the last layer (`common.recipes`); the
    config records the recipe's name. RecipeError (a ValueError) for an unknown recipe."""
    overlay = train_overlay(recipe, resolve(name)[0], stage)
    return dataclasses.replace(compose(name, stage, [overlay]), recipe=recipe)
