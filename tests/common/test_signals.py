"""Every signal cleans up like Ctrl-C: SIGTERM (a scheduler's timeout, `docker stop`) and SIGHUP (a closed
terminal) in the middle of a write leave no half-written file and exit 128 + the signal; a refused
command leaves nothing beside the user's file (no lock file, no GGUF beside a foreign Modelfile)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from model.cli import cli
from tests.conftest import ROOT
from tests.model.conftest import save_tiny, tiny_model

# The command, held just before its finished output replaces the old one (the temporary is complete on
# disk): the signal lands where a real write of gigabytes spends its time.
SLOW = """
import contextlib, sys, time
import common.outputs, model.export.gguf
real_file, real_commit = common.outputs.atomic_file, common.outputs.OutputFolder.commit

@contextlib.contextmanager
def slow_file(path, what=None):
    with real_file(path, what) as tmp:
        yield tmp
        print("WRITING", flush=True)
        time.sleep(60)

def slow_commit(self):
    print("WRITING", flush=True)
    time.sleep(60)
    return real_commit(self)

model.export.gguf.atomic_file, common.outputs.OutputFolder.commit = slow_file, slow_commit
from common.cli import run_cli
sys.argv = ["model", *sys.argv[1:]]
run_cli("model.cli", "python -m model")
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, cut_qwen2):
    return save_tiny(tmp_path_factory.mktemp("signals") / "sft", "sft", tokenizer=cut_qwen2,
                     model=tiny_model(block_size=64, vocab_size=512))  # a cut Qwen2 vocabulary: GGUF needs BPE


@pytest.mark.parametrize("command, sig", [("gguf", signal.SIGTERM), ("export", signal.SIGHUP)])
def test_a_stop_signal_mid_write_leaves_nothing_half_written(run, tmp_path, command, sig):
    out = tmp_path / ("model.gguf" if command == "gguf" else "hf")
    proc = subprocess.Popen([sys.executable, "-c", SLOW, command, "--ckpt", str(run), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert "WRITING" in proc.stdout.readline()
        assert {p.name for p in tmp_path.iterdir()} - {out.name} != set()  # the temporary is there
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == "Error: interrupted" and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # no temporary left


def test_a_refused_output_leaves_nothing_beside_the_users_file(run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.gguf").write_text("my notes")
    (mine / "hf").mkdir()
    (mine / "hf" / "thesis.txt").write_text("precious")
    for args in (["gguf", "--out", str(mine / "notes.gguf")], ["export", "--out", str(mine / "hf")]):
        r = CliRunner().invoke(cli, [*args, "--ckpt", str(run)])
        assert r.exit_code == 1 and "nothing was changed" in r.output, r.output
    assert sorted(p.name for p in mine.iterdir()) == ["hf", "notes.gguf"]  # no .notes.gguf.lock, no .hf.lock
    (run / "Modelfile").write_text("FROM someone-elses-model\n")
    r = CliRunner().invoke(cli, ["ollama", "--ckpt", str(run)])
    assert r.exit_code == 1 and "Modelfile" in r.output
    assert not list(run.glob("*.gguf")) and not list(run.glob(".*.lock"))  # refused before the GGUF was written
