"""bench.gpu_check: one line and exit 0 without CUDA; its training check runs (on a CPU, tiny, the CUDA
memory counters stubbed) and its loss falls in 20 steps."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench import gpu_check
from tests.conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_it_says_so_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and "no CUDA device" in r.stdout


@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_the_training_check_runs_and_its_loss_falls(monkeypatch, arch):
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 1 << 20)
    line = gpu_check.train_check(arch, torch.device("cpu"), 259, "tiny",
                                 ("compile=off", "batch_size=8", "micro_batch_size=4", "lr=3e-3"))
    assert f"{arch}: " in line and "tokens/s" in line and "MFU" in line and "plan" in line
    assert "loss falls" in line, line
