"""Paths as the user typed them: ``~`` expanded, and a mistyped local path never taken for a hub name."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def expand_user(text: str) -> str:
    """A path as a shell would have given it, ``~`` and ``~user`` expanded. ``make VAR=~/x`` and
    ``ARGS="--model ~/x"`` hand the ``~`` over as typed (nothing in a make value is expanded)."""
    return os.path.expanduser(text) if text.startswith("~") else text


def looks_like_hub_name(spec: str, file_suffixes: Sequence[str] = (".json", ".jsonl")) -> bool:
    """``owner/name`` that is not a local path: what `datasets.load_dataset` would look up on the hub.

    A mistyped local path (``data/belle.json`` where ``data/`` exists, or any ``*.json``) stays a path,
    so its error says "no such file" rather than "cannot reach the hub".
    """
    path = Path(spec)
    return (spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not path.exists()
            and not path.parent.exists() and path.suffix not in file_suffixes)
