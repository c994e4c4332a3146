"""prep's common options (the rest of what command lines share is `common.cli`)."""

from __future__ import annotations

from collections.abc import Callable

import click

from common.cli import FiniteFloat
from common.recipes import DEFAULT_RECIPE, RECIPES
from prep.records import PrepError
from prep.shard import ShardSpec, parse_shard
from prep.tokenizer import DEFAULT_TOKENIZER

MAX_WORKERS = 1024  # processes, each with a copy of the tokenizer: more is a typo, not a machine


class ShardOption(click.ParamType):
    """``--shard I/N``: shard I (from 0) of N (`prep.shard`)."""

    name = "I/N"

    def convert(self, value, param, ctx) -> ShardSpec:
        if isinstance(value, ShardSpec):
            return value
        try:
            return parse_shard(value)
        except PrepError as e:
            self.fail(str(e).removeprefix(f"--shard {value!r}: "), param, ctx)


def prep_options(f: Callable) -> Callable:
    """--tokenizer, --recipe, --vocab-size, --val-fraction, --workers and --shard: the options every prep command
    shares."""
    f = click.option("--vocab-size", type=click.IntRange(min=300), default=None,
                     help="--recipe modern: ids of the cut vocabulary when this prep cuts it (default: the "
                     "recipe's, common/recipes.py).")(f)
    f = click.option("--recipe", type=click.Choice(RECIPES), default=DEFAULT_RECIPE, show_default=True,
                     help="seed: tokenize with --tokenizer. modern: with the run's vocabulary cut to the pretraining "
                     "corpus, the folder `vocab` beside OUT (prep wiki|text make it the first time; prep "
                     "sft|pref reuse it; prep/recipe_vocab.py).")(f)
    f = click.option("--shard", type=ShardOption(), default=None,
                     help="Read only shard I (from 0) of N of the inputs (the I-th of N equal byte ranges) and record what "
                     "`prep merge` needs to rebuild the unsharded folder exactly (docs/shards.md).")(f)
    f = click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=None,
                     help="Worker processes (default: every core). 1 runs in-process; the output is the same.")(f)
    f = click.option("--val-fraction", type=FiniteFloat(0.0, 1.0, max_open=True), default=0.005,
                     show_default=True, help="Share of documents in the val split, chosen by a stable hash of "
                     "each document's id, so a document never changes split between runs.")(f)
    f = click.option("--tokenizer", default=DEFAULT_TOKENIZER, show_default=True,
                     help="qwen2 (offline Qwen2 tokenizer), a cut vocabulary's folder (`prep vocab`), bytes (tests), "
                     "or a Hugging Face name or folder.")(f)
    return f
