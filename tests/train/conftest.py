"""Token folders for trainer tests, written with the real writer and the 259-id bytes tokenizer."""

from __future__ import annotations

import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prep.tokenfile import TokenFolderWriter
from prep.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

# A model this small trains in milliseconds per step on a CPU.
TINY_SET = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "batch_size=8", "micro_batch_size=4",
            "lr=3e-3", "warmup_steps=2", "eval_blocks=4", "sample_tokens=4", "log_every=1"]


def tiny_args(*extra: str, shape: bool = True) -> list[str]:
    """CLI arguments of a tiny run; without `shape`, SFT takes the model shape from its --init."""
    args = ["--preset", "tiny"]
    for item in TINY_SET:
        if shape or item.split("=")[0] not in ("n_layer", "n_head", "n_embd", "block_size"):
            args += ["--set", item]
    return args + list(extra)


def texts(n: int, seed: int) -> list[str]:
    """Repetitive sentences: enough structure for a tiny model to learn something in a few steps."""
    rng = np.random.default_rng(seed)
    words = ["数学", "是", "研究", "数量", "结构", "以及", "空间", "等", "概念", "的", "一门", "学科", "。"]
    return ["".join(rng.choice(words, size=rng.integers(20, 60))) for _ in range(n)]


def write_pretrain(path: Path, n_docs: int = 40, tokenizer: str = "bytes", seed: int = 0,
                   identity: dict | None = None) -> Path:
    tok = load_tokenizer(tokenizer)
    with TokenFolderWriter(path, "pretrain", identity or tok.identity()) as w:
        for i, text in enumerate(texts(n_docs, seed=seed)):
            ids = tok.encode(text) + [tok.eot_id]
            w.add("val" if i % 8 == 0 else "train", ids, n_bytes=len(text.encode()))
        w.finish()
    return path


def write_sft(path: Path, n_dialogs: int = 30, all_masked_out: bool = False, identity: dict | None = None) -> Path:
    """ChatML-like dialogs: user turns untrained, assistant replies (+ <|im_end|>) trained."""
    tok = load_tokenizer("bytes")
    rng = np.random.default_rng(1)
    identity = identity or tok.identity()
    with TokenFolderWriter(path, "sft", identity, with_mask=True, with_turns=True) as w:
        for i in range(n_dialogs):
            ids, mask, turns, target_bytes = [], [], [], 0
            for _ in range(int(rng.integers(1, 4))):
                q, a = texts(2, seed=int(rng.integers(1 << 30)))
                q, a = q[:6], a[:20]
                turns.append(len(ids))
                user = [tok.im_start_id] + tok.encode("user\n" + q) + [tok.im_end_id] + tok.encode("\n")
                head = [tok.im_start_id] + tok.encode("assistant\n")
                reply = tok.encode(a) + [tok.im_end_id]
                ids += user + head + reply + tok.encode("\n")
                mask += [0] * (len(user) + len(head)) + [0 if all_masked_out else 1] * len(reply) + [0]
                target_bytes += 0 if all_masked_out else len(a.encode())
            ids.append(tok.eot_id)
            mask.append(0)
            w.add("val" if i % 6 == 0 else "train", ids, mask, turns, n_bytes=len(ids), target_bytes=target_bytes)
        w.finish()
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m train ARGS``, run in this process: a fresh interpreter spends seconds importing torch for
    a run of milliseconds. The tests that need a real process (to kill it, or under torchrun) start one.
    An exception the command does not turn into one line is a traceback on stderr and exit 1, as it
    would be in a process, so "no traceback" checks still see it."""
    from train.cli import cli

    result = CliRunner().invoke(cli, list(args), prog_name="python -m train")
    stderr = result.stderr
    if result.exc_info and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(["python -m train", *args], result.exit_code, result.stdout, stderr)


@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory) -> Path:
    return write_pretrain(tmp_path_factory.mktemp("data") / "wiki")


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    return write_sft(tmp_path_factory.mktemp("data") / "sft")
