"""`train dpo`: DPO from a tiny SFT checkpoint starts at ln 2 and learns the pairs; SimPO and ORPO run; a
killed run resumes exactly (its reference log-probs kept); two processes under torchrun train the same."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from model.cli import cli as model_cli
from prep.pref import run_pref
from tests.train.conftest import PY, ROOT, run_cli, tiny_args, write_pretrain, write_sft
from tests.train.test_ddp import TORCHRUN
from tests.train.test_resume import wait_for_step

# A chosen reply that follows the question, a rejected one that does not: learnable in a few steps.
PAIRS = [{"prompt": f"q {'abcdefghij'[i % 10]}{i}?", "chosen": f"yes {'abcdefghij'[i % 10]}{i}.",
          "rejected": f"no {i % 7}!"} for i in range(80)]
SHAPE = ["--set", "block_size=40"]
DPO = ["--set", "batch_size=8", "--set", "micro_batch_size=4", "--set", "lr=2e-3", "--set", "warmup_steps=2",
       "--set", "eval_blocks=8", "--set", "sample_tokens=4", "--set", "log_every=1"]


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pref_setup(tmp_path_factory) -> tuple[Path, Path]:
    """A pref folder (bytes tokenizer, dialogs of at most 41 tokens) and a tiny SFT checkpoint."""
    root = tmp_path_factory.mktemp("pref")
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    run_pref(root / "pairs.jsonl", root / "pref", tokenizer="bytes", max_len=41, val_fraction=0.15, workers=1,
             show_progress=False)
    run = ["--max-steps", "10", "--eval-every", "10", *SHAPE]
    r = run_cli("pretrain", *tiny_args("--data", str(write_pretrain(root / "wiki")), "--out", str(root / "pre"), *run))
    assert r.returncode == 0, r.stderr
    r = run_cli("sft", *tiny_args("--data", str(write_sft(root / "sft_data")), "--init", str(root / "pre"),
                                  "--out", str(root / "sft"), *run))
    assert r.returncode == 0, r.stderr
    return root / "pref", root / "sft"


def dpo_args(setup, out: Path, *extra: str) -> list[str]:
    data, init = setup
    return ["dpo", "--preset", "tiny", "--data", str(data), "--init", str(init), "--out", str(out), *DPO, *extra]


def test_dpo_starts_at_ln2_and_reward_accuracy_rises(pref_setup, tmp_path):
    out = tmp_path / "dpo"
    r = run_cli(*dpo_args(pref_setup, out, "--max-steps", "30", "--eval-every", "15"))
    assert r.returncode == 0, r.stderr
    lines = records(out)
    train = [x for x in lines if "loss" in x]
    evals = [x for x in lines if "val_loss" in x]
    assert evals[0]["step"] == 0 and evals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at the first step
    assert sum(x["reward_acc"] for x in train[-5:]) / 5 > 0.8 and evals[-1]["val_reward_acc"] > 0.8
    assert {"margin", "chosen_logp", "rejected_logp"} <= train[-1].keys() and "val_chosen_shift" in evals[-1]
    assert json.loads((out / "checkpoint" / "model.json").read_text())["chat"] is True
    assert "reference log-probs of" in " ".join(r.stderr.split())
    report = " ".join(run_cli("report", "--lineage", str(out)).stdout.split())
    assert "base model (pretrain)" in report and "chat model (sft)" in report and "chat model (dpo)" in report
    assert "lineage pretrain (" in report.replace("│", "").replace("  ", " ")
    parent = json.loads((out / "checkpoint" / "train_config.json").read_text())["init_identity"]
    assert parent["step"] == 10 and parent["path"] == str(pref_setup[1]) and len(parent["weights_sha256"]) == 64


def test_the_dpo_model_chats_and_exports_as_a_chat_model(pref_setup, tmp_path):
    out = tmp_path / "dpo"
    assert run_cli(*dpo_args(pref_setup, out, "--max-steps", "2", "--eval-every", "2")).returncode == 0
    model = lambda *a: CliRunner().invoke(model_cli, list(a))  # noqa: E731
    chat = model("chat", "--ckpt", str(out), "--message", "q a1?", "--max-new-tokens", "3")
    assert chat.exit_code == 0 and "assistant:" in chat.output, chat.output
    export = model("export", "--ckpt", str(out), "--out", str(tmp_path / "hf"))
    assert export.exit_code == 0 and "exported a chat model" in " ".join(export.output.split()), export.output


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_losses_run(pref_setup, tmp_path, loss):
    out = tmp_path / loss
    r = run_cli(*dpo_args(pref_setup, out, "--max-steps", "4", "--eval-every", "4", "--set", f"loss={loss}"))
    assert r.returncode == 0, r.stderr
    train = [x for x in records(out) if "loss" in x]
    assert len(train) == 4 and all(math.isfinite(x["loss"]) and 0 <= x["reward_acc"] <= 1 for x in train)
    with open(out / "reference_logps.npz", "rb") as f:  # only the val pairs: the loss needs no reference
        assert b"train.npy" not in f.read()


def test_killed_run_resumes_exactly(pref_setup, tmp_path):
    run = ["--max-steps", "16", "--eval-every", "8", "--ckpt-every", "4", "--set", "lr=1e-3"]
    whole = tmp_path / "whole"
    assert run_cli(*dpo_args(pref_setup, whole, *run)).returncode == 0
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PY, "-m", "train", *dpo_args(pref_setup, out, *run)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(proc, out, 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run_cli(*dpo_args(pref_setup, out, *run))
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "reference log-probs of" not in r.stderr  # read back, not recomputed
    keep = ("step", "loss", "reward_acc", "margin", "val_loss", "val_reward_acc")
    strip = lambda rows: [{k: x[k] for k in keep if k in x} for x in rows]  # noqa: E731
    assert strip(records(out)) == strip(records(whole))
    kept = [json.loads((o / "checkpoint" / "train_config.json").read_text()) for o in (whole, out)]
    assert kept[0]["init_identity"] == kept[1]["init_identity"] is not None  # a resumed run keeps its parent
    a, b = load_file(whole / "checkpoint" / "model.safetensors"), load_file(out / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="needs .venv/bin/torchrun")
def test_two_processes_train_as_one(pref_setup, tmp_path):
    run = ["--max-steps", "4", "--eval-every", "4", "--set", "micro_batch_size=2"]  # one pair per micro-batch
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(*dpo_args(pref_setup, one, *run)).returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "train", *dpo_args(pref_setup, two, *run)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = lambda out: [x.get("loss", x.get("val_loss")) for x in records(out)]  # noqa: E731
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    a, b = load_file(one / "checkpoint" / "model.safetensors"), load_file(two / "checkpoint" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_plan_knows_the_stage():
    from click.testing import CliRunner

    from train.plan_cli import plan_command

    r = CliRunner().invoke(plan_command, ["--stage", "dpo", "--preset", "tiny", "--gpu-mem", "24GB"])
    assert r.exit_code == 0, r.output
    assert "reference model is never held" in " ".join(r.output.split())


def test_a_resumed_run_without_its_reference_stops_with_one_line(pref_setup, tmp_path):
    out = tmp_path / "dpo"
    run = ["--max-steps", "4", "--eval-every", "4"]
    assert run_cli(*dpo_args(pref_setup, out, *run, "--stop-at", "2")).returncode == 0
    (out / "reference_logps.npz").unlink()
    r = run_cli(*dpo_args(pref_setup, out, *run))
    assert r.returncode == 1 and "reference_logps.npz: missing" in r.stderr and "Traceback" not in r.stderr


def test_a_run_killed_before_its_first_checkpoint_starts_over(pref_setup, tmp_path):
    out = tmp_path / "dpo"
    out.mkdir()
    (out / "reference_logps.npz").write_bytes(b"cut short by kill -9")  # the run's first file, nothing else
    r = run_cli(*dpo_args(pref_setup, out, "--max-steps", "2", "--eval-every", "2"))
    assert r.returncode == 0, r.stderr
    assert "reference log-probs of" in " ".join(r.stderr.split())  # computed again by the --init model


def test_a_damaged_reference_on_resume_is_one_line_and_the_checkpoint_stays(pref_setup, tmp_path):
    import hashlib
    import io
    import shutil

    import numpy as np

    base = tmp_path / "base"
    run = ["--max-steps", "4", "--eval-every", "4"]
    assert run_cli(*dpo_args(pref_setup, base, *run, "--stop-at", "2")).returncode == 0
    with np.load(base / "reference_logps.npz") as f:
        good = {k: f[k] for k in f.files}
    npy = io.BytesIO()
    np.save(npy, good["val"])
    damaged = {"cut_in_half": (base / "reference_logps.npz").read_bytes()[:300], "npy": npy.getvalue(),
               "short": {**good, "train": good["train"][:-1]}, "nan": {**good, "val": good["val"] * np.nan}}
    digest = lambda out: {p.name: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                          for p in (out / "checkpoint").iterdir()}
    for name, content in damaged.items():
        out = tmp_path / name
        shutil.copytree(base, out)
        if isinstance(content, bytes):
            (out / "reference_logps.npz").write_bytes(content)
        else:
            np.savez(out / "reference_logps.npz", **content)
        before = digest(out)
        r = run_cli(*dpo_args(pref_setup, out, *run))
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1 and "Traceback" not in r.stderr, (name, r.stderr)
        assert "reference_logps.npz" in last and "start a new run" in last, (name, r.stderr)
        assert digest(out) == before, name
