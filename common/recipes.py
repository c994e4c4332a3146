"""The training recipes by name, each decision with the measurement that chose it: the one place that says
what ``RECIPE=modern`` (``--recipe modern``) means.

* ``seed``: the project's reference and ``make pretrain``'s default: GPT-2 blocks, AdamW, Qwen2's full
  151,646-id vocabulary. Every earlier run, test and figure was made with it.
* ``modern``: the recommended path (``make all``'s default):

  - **Qwen2's vocabulary cut to the pretraining corpus**, 32,768 ids (`prep.vocab`). Cut once, by the
    pretraining prep (``prep wiki|text --recipe modern``), into the folder ``vocab`` beside its OUT, and
    reused by every later prep of the same run (``prep sft|pref --recipe modern`` with an OUT in the same
    folder). Measured (``bench.vocab``, README 2c): ``tiny`` trains 3.7-4.1x faster per token at 32,768
    ids (``mini`` 2.2x) and, in the same time, reached val bpb 3.193 against the full vocabulary's 3.424.
  - **qwen3 blocks + Muon** on the hidden matrices (``arch=qwen3``, ``optimizer=muon``, ``muon_lr=0.02``,
    Keller Jordan's default and the sweep's best of 0.01/0.02/0.04). Measured (``bench.recipe``, wiki_zh
    sample, tiny body, 205k tokens): the seed's final bpb reached with 0.30x its tokens; 3.293 against
    3.874 at equal tokens. The AdamW part (embeddings, output layer, norms) at lr 3e-3 for ``tiny`` (the
    rate those runs used); ``mini`` keeps its preset's 6e-4 (not measured at that size on this CPU).
  - Fine-tuning stages (sft, dpo) take the architecture from ``--init`` and keep their stage's AdamW
    rates: no fine-tuning measurement here favours Muon there.

Layering of a run's config: size preset -> stage overlay (``NAME-sft``, ``NAME-dpo``) -> recipe -> ``--set``.
This module only holds values (it imports nothing of the project), so prep and train both read it.
"""

from __future__ import annotations

RECIPES = ("seed", "modern")
DEFAULT_RECIPE = "seed"  # `make pretrain` and the commands; `make all` defaults to modern
RECOMMENDED = "modern"

# ids kept by the modern recipe's vocabulary cut (None: Qwen2's full vocabulary)
VOCAB_SIZE = {"seed": None, "modern": 32768}
VOCAB_FOLDER = "vocab"  # the run's cut vocabulary: a folder of this name beside the pretraining prep's OUT

# Field values per recipe, size and stage; a size not listed takes the "*" entry.
_MODERN_PRETRAIN = {"arch": "qwen3", "optimizer": "muon", "muon_lr": 0.02}
TRAIN: dict[str, dict[str, dict[str, dict]]] = {
    "seed": {"*": {}},
    "modern": {
        "tiny": {"pretrain": {**_MODERN_PRETRAIN, "lr": 3e-3}},
        "*": {"pretrain": _MODERN_PRETRAIN},
    },
}


class RecipeError(ValueError):
    """An unknown recipe name."""


def check(name: str) -> str:
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return name


def size_of(preset: str) -> str:
    """The size a preset name stands for: ``qwen3-tiny-sft`` -> ``tiny``."""
    name = preset.removeprefix("qwen3-")
    for suffix in ("-sft", "-dpo"):
        name = name.removesuffix(suffix)
    return name


def train_overlay(recipe: str, preset: str, stage: str) -> dict:
    """The field values `recipe` sets on top of the preset (and its stage overlay) for `stage`."""
    sizes = TRAIN[check(recipe)]
    return dict(sizes.get(size_of(preset), sizes["*"]).get(stage, {}))


def vocab_size(recipe: str) -> int | None:
    """Ids of the recipe's cut vocabulary, or None for Qwen2's full one."""
    return VOCAB_SIZE[check(recipe)]
