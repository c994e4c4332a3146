"""``python -m train all`` (``make all``): the whole path from raw text to a model card, a GGUF and a report.

Steps, each a function below, in order: prep wiki (under ``--recipe modern`` this also cuts the vocabulary
to the pretraining corpus, `prep.recipe_vocab`), prep sft, prep pref (with ``--pref``), pretrain, sft, dpo
(with ``--pref``), held-out bits per byte (with ``--heldout``), the harness (only where the hub answers),
the Hugging Face export (its README.md is the model card, `model.export.card`), the GGUF, the report.

Everything lands in OUT: ``data/{wiki,vocab,sft,pref}``, ``pretrain``, ``sft``, ``dpo``, ``hf``,
``model-f16.gguf``, ``report.md`` and ``all.json``, the ledger (`Ledger`). Run again after any
interruption, it resumes: a step the ledger records as finished is skipped (by what it recorded: its
inputs' contents and its settings, never timestamps); the training stage in flight resumes exactly from
its checkpoint (`train.trainer`). A step whose inputs or settings differ from what the ledger recorded
for it is refused, naming what changed: never a silent mix of two runs.
"""

from __future__ import annotations

from pathlib import Path

from common.outputs import output_lock
from common.recipes import vocab_size as recipe_vocab_size
from train.pipeline_ledger import LEDGER, AllError, AllSpec, Ledger
from train.pipeline_steps import STEPS


def run_all(spec: AllSpec) -> Path:
    """Every step in order; returns the report's path. Holds OUT's lock throughout."""
    spec.out.mkdir(parents=True, exist_ok=True)
    if recipe_vocab_size(spec.recipe) is None and spec.vocab_size is not None:
        raise AllError(f"--vocab-size is for a recipe that cuts the vocabulary, not {spec.recipe}")
    with output_lock(spec.out / LEDGER, "make all run"):
        ledger, state = Ledger(spec.out), {}
        for step in STEPS:
            step(spec, ledger, state)
    return spec.out / "report.md"
