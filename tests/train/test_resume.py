"""Exact resumption: a run killed (kill -9) or interrupted (Ctrl-C) and rerun equals a run never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.train.conftest import PY, ROOT, run_cli, tiny_args

STOP = 30
# eval rarely and checkpoint every 10 steps; a long schedule so a run we kill is surely still going
RUN = ["--max-steps", "10000", "--eval-every", "1000", "--ckpt-every", "10", "--set", "block_size=64"]


def train_lines(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", "loss", "lr", "grad_norm")} for r in lines if "loss" in r]


def ckpt_step(out: Path) -> int:
    return json.loads((out / "checkpoint" / "model.json").read_text())["step"]


def weights(out: Path) -> dict:
    return load_file(out / "checkpoint" / "model.safetensors")


def start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = tiny_args("--data", str(data), "--out", str(out), *RUN, *extra)
    return subprocess.Popen([PY, "-m", "train", "pretrain", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stdout.read()}")
        metrics = out / "metrics.jsonl"
        if metrics.exists() and any(f'"step": {step},' in line for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.005)
    pytest.fail(f"no step {step} within {timeout}s")


@pytest.fixture(scope="module")
def reference(pretrain_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), *RUN, "--stop-at", str(STOP)))
    assert r.returncode == 0, r.stderr
    assert ckpt_step(out) == STOP and len(train_lines(out)) == STOP
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    assert train_lines(out) == train_lines(reference)  # every step's loss, lr and grad norm, bit for bit
    got, want = weights(out), weights(reference)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].equal(want[name]), name


def test_killed_run_resumes_exactly(pretrain_data, tmp_path, reference):
    out = tmp_path / "run"
    proc = start(pretrain_data, out)
    wait_for_step(proc, out, 11)  # the checkpoint of step 10 is on disk, step 11+ is not
    proc.kill()
    proc.wait()
    killed_at = ckpt_step(out)
    assert 10 <= killed_at < STOP
    r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), *RUN, "--stop-at", str(STOP)))
    assert r.returncode == 0, r.stderr
    assert f"resuming from {out / 'checkpoint'} at step {killed_at}" in " ".join(r.stderr.split())
    assert_same_run(out, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_saves_a_checkpoint_and_the_rerun_continues_exactly(pretrain_data, tmp_path, reference, sig):
    """Ctrl-C, or a closed terminal (SIGHUP): checkpoint, exit 128 + signal, and a rerun continues bit for bit."""
    out = tmp_path / "run"
    proc = start(pretrain_data, out)
    wait_for_step(proc, out, 5)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, output
    assert "interrupted at step" in output and "Run the same command again" in output
    stopped_at = ckpt_step(out)
    assert stopped_at >= 5 and train_lines(out)[-1]["step"] == stopped_at
    if stopped_at >= STOP:
        pytest.skip(f"the run reached step {stopped_at} before the signal landed; nothing left to resume")
    r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), *RUN, "--stop-at", str(STOP)))
    assert r.returncode == 0, r.stderr
    assert_same_run(out, reference)


def test_a_finished_run_is_not_trained_again(pretrain_data, tmp_path):
    out = tmp_path / "run"
    args = tiny_args("--data", str(pretrain_data), "--out", str(out), "--max-steps", "3", "--eval-every", "3")
    assert run_cli("pretrain", *args).returncode == 0
    before = (out / "metrics.jsonl").read_text()
    r = run_cli("pretrain", *args)
    assert r.returncode == 0 and "at step 3" in r.stderr
    assert (out / "metrics.jsonl").read_text() == before
    assert ckpt_step(out) == 3
    assert (out / "loss.png").stat().st_size > 1000
