"""`train all` (make all): killed during pretraining and run again, it skips the finished steps, resumes the
stage in flight exactly (the same losses as a run never interrupted) and refuses changed settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests.train.conftest import PY, ROOT

TINY = ["--preset", "tiny", "--vocab-size", "1024", "--val-fraction", "0.1", "--steps", "12",
        "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "eval_every=6",
        "--set", "ckpt_every=3", "--set", "sample_tokens=0"]


def command(out, *extra: str) -> list[str]:
    return [PY, "-m", "train", "all", "--wiki", "sample_data/wiki_zh", "--belle",
            "sample_data/belle/multiturn_chat.json", "--out", str(out), *TINY, *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MK_ARGS": ""}


def run(out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def losses(run_folder) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}  # a resumed run logs a step again: the last counts


def kill_during_pretraining(out) -> None:
    proc = subprocess.Popen(command(out), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    info = out / "pretrain" / "checkpoint" / "model.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if info.is_file() and json.loads(info.read_text())["step"] >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    steps = json.loads((out / "all.json").read_text())["steps"]
    assert "result" in steps["prep-wiki"] and "result" not in steps["pretrain"], "not killed during pretraining"


def test_killed_in_pretraining_then_rerun_matches_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    done = run(whole)
    assert done.returncode == 0, done.stderr[-3000:]
    cut = tmp_path / "cut"
    kill_during_pretraining(cut)
    wiki_meta = (cut / "data" / "wiki" / "meta.json").stat().st_mtime_ns
    again = run(cut)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== prep-wiki: done before, skipped" in again.stdout and "== pretrain: done before" not in again.stdout
    assert (cut / "data" / "wiki" / "meta.json").stat().st_mtime_ns == wiki_meta  # not redone
    for stage in ("pretrain", "sft"):
        assert losses(cut / stage) == losses(whole / stage), stage
    for path in ("hf/README.md", "model-f16.gguf", "report.md", "sft/checkpoint/tokenizer/vocab.json"):
        assert (cut / path).is_file(), path
    report = (cut / "report.md").read_text()
    assert "| pretrain | modern: qwen3, muon" in report and "harness" in report  # skipped offline, with a note

    third = run(cut)  # everything finished: nothing is redone
    assert third.returncode == 0 and third.stdout.count("done before, skipped") == 6, third.stdout
    changed = run(cut, "--set", "lr=1e-3")
    assert changed.returncode == 1 and "step pretrain was run with other inputs or settings" in changed.stderr
    assert "config.lr 0.003 -> 0.001" in changed.stderr
