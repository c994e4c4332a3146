"""Shared test fixtures. Tests run offline on a CPU; data from ../shared is optional (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread, here and in every process a test starts: the tests' models are tiny, so a second thread
# only adds a synchronisation per op, and on a busy machine torch's spinning worker threads made an
# in-process training step about 4x slower (measured: 2.5 s against 10.4 s for a 12-step SFT test).
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
def cut_qwen2(tmp_path_factory) -> str:
    """A 512-id cut of Qwen2's vocabulary (`prep vocab` on the bundled wiki sample), as a tokenizer name: a
    real byte-level BPE with Qwen2's special tokens, for GGUF and Hugging Face exports whose subject is not
    the vocabulary (Qwen2's 151,680-row head and 300k vocabulary strings cost seconds per export and read)."""
    from prep.vocab_build import build_vocab
    from prep.wiki import run_wiki

    tmp = tmp_path_factory.mktemp("cut_qwen2")
    run_wiki(ROOT / "sample_data" / "wiki_zh", tmp / "wiki", val_fraction=0.2, workers=1, show_progress=False)
    build_vocab([tmp / "wiki"], tmp / "vocab", 512)
    return str(tmp / "vocab")


@pytest.fixture(scope="session")
def byte_tokenizer():
    """The 259-id tokenizer for tests where the tokenizer is not the point."""
    from prep.tokenizer import load_tokenizer

    return load_tokenizer("bytes")


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own tiny tmpfs (`small_disk(size)` mounts it): the way to test a full or read-only
    disk for real. Needs root (CI runs as root); skipped cleanly elsewhere."""
    import subprocess

    mounts = []

    def mount(size: str = "1m", read_only: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
