"""DDP: two processes (torchrun, gloo on CPU) with accumulation A equal one process with 2A."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import ROOT, run_cli, tiny_args

TORCHRUN = ROOT / ".venv" / "bin" / "torchrun"
# batch 8 = micro 2 x accumulation 4 x 1 process = micro 2 x accumulation 2 x 2 processes
ARGS = ["--max-steps", "6", "--eval-every", "3", "--set", "micro_batch_size=2", "--set", "batch_size=8"]


def losses(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss")) for r in lines]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="needs .venv/bin/torchrun")
# Muon's Newton-Schulz steps run in bf16 (torch.optim.Muon): a gradient summed in another order can round
# to another bf16 value; after 6 steps at muon_lr 0.02 (entries move ~3e-3 a step) the weights agree to ~3e-4
# instead of ~1e-6, and the losses still to 1e-5.
@pytest.mark.parametrize("recipe, atol", [([], 1e-5), (["--set", "arch=qwen3", "--set", "optimizer=muon"], 1e-3)],
                         ids=["seed", "qwen3-muon"])
def test_two_ranks_match_one_process_with_twice_the_accumulation(pretrain_data, tmp_path, recipe, atol):
    """Muon too: every rank orthogonalises the same all-reduced gradients, so the ranks stay equal."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*ARGS, *recipe]
    r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(one), *args))
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "train", "pretrain",
           *tiny_args("--data", str(pretrain_data), "--out", str(two), *args)]
    r2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "2 rank(s)" in " ".join(r2.stderr.split()) and "x 2 accumulation" in " ".join(r2.stderr.split())
    assert len(losses(one)) == len(losses(two)) == 6 + 3  # train lines + evals at 0, 3, 6, written once (rank 0)
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    a, b = load_file(one / "checkpoint" / "model.safetensors"), load_file(two / "checkpoint" / "model.safetensors")
    for name in a:  # fp32 sums in another order; the key bias (a zero gradient up to rounding) moves ~1e-6
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
