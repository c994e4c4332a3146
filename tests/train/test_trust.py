"""What a careful user (or a typo) must not be able to break: run folders are typed and locked, a
diverged run keeps a finite checkpoint, state from another run is refused, a full disk is one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.outputs import OutputError, output_lock
from model.io import load_model
from tests.train.conftest import TINY_SET, run_cli, tiny_args, write_pretrain
from train.overrides import apply_overrides
from train.perf import PeakMeter
from train.presets import preset
from train.trainer import RunSpec, TrainError, train


def tiny_cfg(*extra: str):
    return apply_overrides(preset("tiny"), [*TINY_SET, "eval_every=100", *extra])


def one_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pretrain_run(pretrain_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("typed") / "pretrain"
    train(tiny_cfg("max_steps=2"), RunSpec("pretrain", pretrain_data, out))
    return out


def test_sft_into_a_pretraining_run_is_refused_and_nothing_changes(pretrain_run, sft_data, tmp_path):
    """`make sft OUT=runs/pretrain` (a typo) must not resume the pretraining run as SFT."""
    out = tmp_path / "pretrain"
    shutil.copytree(pretrain_run, out)
    before = snapshot(out)
    err = one_line(run_cli("sft", *tiny_args("--data", str(sft_data), "--init", str(pretrain_run), "--out", str(out),
                                             shape=False)))
    assert "holds a pretrain run; `train sft` would overwrite it" in err
    assert snapshot(out) == before


def test_pretraining_into_an_sft_run_is_refused(pretrain_run, sft_data, pretrain_data, tmp_path):
    out = tmp_path / "sft"
    train(tiny_cfg("max_steps=1"), RunSpec("sft", sft_data, out, init=pretrain_run))
    before = snapshot(out)
    err = one_line(run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out))))
    assert "holds a sft run" in err or "needs a 'pretrain' one" in err
    assert snapshot(out) == before


def test_an_out_folder_that_is_not_a_run_is_refused(pretrain_data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    err = one_line(run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out))))
    assert "is not a run folder" in err and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no .mine.lock left beside it
    (tmp_path / "file").write_text("x")
    err = one_line(run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(tmp_path / "file"))))
    assert "is not a folder" in err


def test_a_second_training_on_the_same_out_is_refused_at_once(pretrain_data, tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "training run"):  # what a first training holds for its whole run
        with pytest.raises(OutputError, match=r"in use by another training run \(pid \d+\)"):
            train(tiny_cfg("max_steps=1"), RunSpec("pretrain", pretrain_data, out))
    assert not out.exists()


def test_divergence_never_reaches_a_checkpoint_and_metrics_stay_json(pretrain_data, tmp_path):
    """lr=1e6 with a checkpoint every step: the run stops, the kept checkpoint is finite and loads."""
    out = tmp_path / "run"
    with pytest.raises(TrainError, match="the step was not applied and the run stops"):
        train(tiny_cfg("lr=1e6", "warmup_steps=0", "ckpt_every=1", "max_steps=50"), RunSpec("pretrain", pretrain_data, out))
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))
    if (out / "checkpoint").exists():  # steps before the divergence were applied and saved: finite ones
        assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoint" / "model.safetensors").values())
        load_model(out)


def test_optimizer_state_of_another_model_is_refused(pretrain_run, pretrain_data, tmp_path):
    other = tmp_path / "other"
    train(tiny_cfg("max_steps=2", "n_embd=64"), RunSpec("pretrain", pretrain_data, other))
    out = tmp_path / "run"
    shutil.copytree(pretrain_run, out)
    shutil.copy(other / "checkpoint" / "trainer.pt", out / "checkpoint" / "trainer.pt")
    err = one_line(run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), "--max-steps", "4")))
    assert "optimizer state" in err and "another model's trainer.pt" in err


def test_resuming_says_what_changed_and_refuses_a_stop_at_in_the_past(pretrain_run, pretrain_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(pretrain_run, out)
    r = run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), "--max-steps", "3",
                                       "--set", "lr=2e-3", "--set", "eval_every=100"))
    assert r.returncode == 0, r.stderr
    assert "changed since the checkpoint:" in r.stderr and "lr 0.003 -> 0.002" in r.stderr and "max_steps" in r.stderr
    err = one_line(run_cli("pretrain", *tiny_args("--data", str(pretrain_data), "--out", str(out), "--max-steps", "5",
                                                  "--stop-at", "2")))
    assert "--stop-at 2: the run is already at step 3" in err


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    data = write_pretrain(tmp_path / "wiki")
    meta = json.loads((data / "meta.json").read_text())
    meta["tokenizer"]["len"] = 200  # the file holds byte ids up to 256
    (data / "meta.json").write_text(json.dumps(meta))
    err = one_line(run_cli("pretrain", *tiny_args("--data", str(data), "--out", str(tmp_path / "run"))))
    assert "outside the tokenizer's 200 ids" in err


def test_a_checkpoint_that_cannot_fit_is_refused_before_training(pretrain_data, small_disk):
    disk = small_disk("200k")
    with pytest.raises(OutputError, match="a checkpoint needs about"):
        train(tiny_cfg("max_steps=2"), RunSpec("pretrain", pretrain_data, disk / "run"))


def test_a_disk_that_fills_during_a_save_keeps_the_previous_checkpoint(pretrain_data, small_disk):
    """Room for one checkpoint (and the plot), not for two: the second save fails with one line."""
    disk = small_disk("800k")
    out = disk / "run"
    with pytest.raises(OutputError, match="No space left on device"):
        train(tiny_cfg("max_steps=4", "ckpt_every=2", "eval_every=2"), RunSpec("pretrain", pretrain_data, out))
    assert json.loads((out / "checkpoint" / "model.json").read_text())["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "loss.png", "metrics.jsonl"]


def test_utilisation_is_never_above_one(monkeypatch):
    import train.perf as perf

    peaks = iter([100.0, 150.0, 150.0])
    monkeypatch.setattr(perf, "peak_flops", lambda device, dtype: (next(peaks), "cpu: measured"))
    meter = PeakMeter(torch.device("cpu"), torch.float32)
    assert meter.utilisation(50.0) == 0.5
    assert meter.utilisation(120.0) == pytest.approx(0.8)  # beat the first peak: measured again (150)
    assert meter.peak == 150.0 and meter.utilisation(300.0) is None and math.isfinite(meter.peak)
