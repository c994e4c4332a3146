"""Shared test fixtures. Tests run offline on a CPU; data from ../shared is optional (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test where it is absent (a user's clone has no ../shared)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real sample data lives in ../shared on the dev machines)")
    return path


@pytest.fixture(scope="session")
def qwen():
    """The real (offline) Qwen2 tokenizer."""
    from prep.tokenizer import load_tokenizer

    return load_tokenizer("qwen2")


@pytest.fixture(scope="session")
def byte_tokenizer():
    """The 259-id tokenizer for tests where the tokenizer is not the point."""
    from prep.tokenizer import load_tokenizer

    return load_tokenizer("bytes")
