"""--log tensorboard / --log wandb: fed the records of metrics.jsonl; wandb offline needs no network."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.train.conftest import PY, ROOT, TINY_SET, tiny_args, write_pretrain
from train import tracking
from train.cli import cli
from train.overrides import apply_overrides
from train.presets import preset
from train.trainer import RunSpec, train


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("track")
    return f"{write_pretrain(root / 'wiki')}:0.4,{write_pretrain(root / 'web', seed=3)}:0.6"


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_scalars_flatten_a_record():
    record = {"step": 7, "val_loss": 2.5, "val_bpb": None, "flag": True,
              "sources": {"wiki": {"val_loss": 2.0, "val_bpb": float("nan")}, "web": {"val_loss": 3.0, "val_bpb": 1.5}}}
    assert tracking.scalars(record) == (7, {"val_loss": 2.5, "val_loss/wiki": 2.0, "val_loss/web": 3.0,
                                            "val_bpb/web": 1.5})


def test_tensorboard_gets_every_metrics_record_once_across_a_resume(mixture, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = apply_overrides(preset("tiny"), [*TINY_SET, "eval_every=2", "max_steps=4"])
    quiet = Console(file=io.StringIO())
    train(cfg, RunSpec("pretrain", mixture, out, stop_at=2, log=("tensorboard",)), quiet)
    train(cfg, RunSpec("pretrain", mixture, out, log=("tensorboard",)), quiet)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    lines = records(out)
    for tag, key, source in (("loss", "loss", None), ("val_loss", "val_loss", None), ("val_loss/wiki", "val_loss", "wiki"),
                             ("val_bpb/web", "val_bpb", "web")):
        want = [(r["step"], r["sources"][source][key] if source else r[key]) for r in lines
                if (source and "sources" in r) or (not source and r.get(key) is not None)]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag  # each step once, in order
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def test_wandb_offline_runs_without_network_and_resumes_the_same_run(mixture, tmp_path):
    wandb_dir = tmp_path / "wandb-home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(wandb_dir), "WANDB_PROJECT": "test"}
    env.pop("WANDB_API_KEY", None)
    out = tmp_path / "run"
    for stop in ("2", "4"):
        args = tiny_args("--data", mixture, "--out", str(out), "--max-steps", "4", "--eval-every", "2",
                         "--stop-at", stop, "--log", "wandb")
        r = subprocess.run([PY, "-m", "train", "pretrain", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=180)  # a hang (waiting for a network) fails here
        assert r.returncode == 0, r.stderr[-3000:]
    run_id = (out / "wandb_id.txt").read_text().strip()
    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(f"-{run_id}") for p in runs)  # the resumed run is the same one
    logged = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
    assert b"val_loss/wiki" in logged and b"grad_norm" in logged


def test_a_missing_tracker_package_is_one_line(mixture, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda name: name != "wandb")
    r = CliRunner().invoke(cli, ["pretrain", *tiny_args("--data", mixture, "--out", str(tmp_path / "run"),
                                                        "--log", "tensorboard", "--log", "wandb")])
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: --log wandb: the wandb package is not installed; pip install wandb "
                                "(or pip install -e '.[track]' for both trackers)")
    assert not (tmp_path / "run").exists()
