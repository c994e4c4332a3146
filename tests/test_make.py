"""`make` hands every value to the programs byte for byte: quotes, backquotes, $VARS and spaces in
PROMPT, paths and ARGS are text, never shell code."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT
from tests.model.conftest import save_tiny

TRICKY = '用`touch pwned`命令，他说"你好" \'引号\' $HOME $(touch pwned2) \\n 结束'


@pytest.fixture
def make_ready():
    stamp, project = ROOT / ".venv" / ".installed", ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < project.stat().st_mtime:
        pytest.skip("the Makefile's .venv is not built and current (make setup); these tests must not build it")


def make(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MK_")}
    return subprocess.run(["make", "--no-print-directory", "-s", "-C", str(ROOT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_prompt_args_and_paths_reach_the_program_unchanged(make_ready, tmp_path):
    run = save_tiny(tmp_path / "a run with spaces $HOME", "pretrain", block_size=64)
    args = '--max-new-tokens 3 --temperature 0 --system "系统 提示 `touch pwned3`"'
    r = make("sample", f"CKPT={run}", f"PROMPT={TRICKY}", f"ARGS={args}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(TRICKY)  # a base model prints its prompt, then the continuation
    assert "--system is ignored" in r.stderr  # ARGS split with its quotes: one --system value
    for name in ("pwned", "pwned2", "pwned3"):
        assert not (tmp_path / name).exists() and not (ROOT / name).exists()


def test_unbalanced_quotes_in_args_are_one_line(make_ready, tmp_path):
    run = save_tiny(tmp_path / "run", "pretrain", block_size=64)
    r = make("sample", f"CKPT={run}", "ARGS=--system \"oops", cwd=tmp_path)
    assert r.returncode != 0 and "Error: ARGS=" in r.stderr and "Traceback" not in r.stderr
