"""Sizes beyond the data or the machine are refused before the first step; Ctrl-C, SIGTERM and SIGHUP
stop a run within seconds even inside a long step, which is abandoned, never half-applied."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.train.conftest import PY, ROOT, run_cli, tiny_args, write_pretrain
from tests.train.test_resume import wait_for_step


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pretrain(tmp_path_factory.mktemp("stop") / "data")


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    return line


def test_a_block_longer_than_the_data_is_refused_at_once(data, tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    r = run_cli("pretrain", *tiny_args("--data", str(data), "--out", str(out), "--set", "block_size=100000",
                                       "--max-steps", "2"))
    line = one_line_error(r)
    assert "block_size 100,000 is longer than any window of the data" in line and str(data) in line
    assert time.monotonic() - t0 < 60 and not (out / "checkpoint").exists() and not (out / "metrics.jsonl").exists()


def test_the_memory_check_counts_activations(data, tmp_path):
    """Weights, gradients and AdamW state of this model are under 2 MB; its activations are ~420 MB."""
    env_before = os.environ.get("TRAIN_FREE_MEMORY")
    os.environ["TRAIN_FREE_MEMORY"] = "128MB"
    try:
        r = run_cli("pretrain", *tiny_args("--data", str(data), "--out", str(tmp_path / "run"), "--set",
                                           "block_size=1024", "--set", "dropout=0.1", "--set", "batch_size=8",
                                           "--set", "micro_batch_size=8", "--max-steps", "1"))
    finally:
        os.environ.pop("TRAIN_FREE_MEMORY") if env_before is None else os.environ.update(TRAIN_FREE_MEMORY=env_before)
    line = one_line_error(r)
    assert "a step needs" in line and "activations" in line and "128.0 MiB is free" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_inside_a_long_step_stops_within_seconds(data, tmp_path, sig):
    """A step of 65,536 micro-batches takes a minute or more here; the signal lands a moment into it."""
    out = tmp_path / "run"
    args = tiny_args("--data", str(data), "--out", str(out), "--set", "batch_size=65536", "--set",
                     "micro_batch_size=1", "--max-steps", "3", "--eval-every", "3")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PY, "-m", "train", "pretrain", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(proc, out, 0)  # the step-0 evaluation is written: step 1 is under way
        time.sleep(1.0)
        proc.send_signal(sig)
        t0 = time.monotonic()
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - t0 < 30 and proc.returncode == 128 + sig, output[-2000:]
    assert "Traceback" not in output
    assert not (out / "checkpoint").exists()  # no step was whole: nothing to save, nothing half-applied
