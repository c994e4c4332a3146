"""Every variable a `make help` line documents reaches its target's program.

Generic over the Makefile: each target's documented variables (``VAR=`` in its help line) are set to
distinct sentinels and the target is run for real, in a folder holding only a copy of the Makefile (and its *.mk), with
every program of the venv replaced by a stub that
logs its arguments and the environment a program reads (`MK_ARGS`, which `common.cli.make_args` splits;
``PYTEST_ADDOPTS``). Nothing real runs: the venv, python, torchrun, pip and ruff are the stubs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

STUB = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items()
                                                   if k in ("MK_ARGS", "PYTEST_ADDOPTS")}}}}) + "\\n")
"""
NUMERIC = {"NPROC": "7391"}  # checked by the recipe to be a number before anything runs


def help_lines() -> dict[str, list[str]]:
    r = subprocess.run(["make", "--no-print-directory", "-s", "-C", str(ROOT), "help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    found = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*make (\S+)\s+(.*)", line)
        if m:
            found[m.group(1)] = sorted(set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", m.group(2))))
    return found


if shutil.which("make") is None:
    pytest.skip("needs make", allow_module_level=True)
TARGETS = {target: names for target, names in help_lines().items() if names}


@pytest.fixture(scope="module")
def stub_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("stubvenv")
    (venv / "bin").mkdir()
    for name in ("python", "torchrun", "pip", "ruff"):
        (venv / "bin" / name).write_text(STUB)
        (venv / "bin" / name).chmod(0o755)
    newer = time.time() + 60  # every stamp newer than pyproject.toml: nothing is (re)built
    for stamp in (".installed", "tf4/.installed", "llama/.installed"):
        (venv / stamp).parent.mkdir(exist_ok=True)
        (venv / stamp).touch()
        os.utime(venv / stamp, (newer, newer))
        newer += 1
    return venv


def reads_make_args(module: str) -> bool:
    """Whether `python -m module` splits MK_ARGS into its arguments (`common.cli.run_cli` / `make_args`)."""
    path = ROOT / module.replace(".", "/")
    source = path / "__main__.py" if path.is_dir() else path.with_suffix(".py")
    return source.is_file() and re.search(r"\b(run_cli|make_args)\(", source.read_text("utf-8")) is not None


def reached(sentinel: str, calls: list[dict]) -> bool:
    for call in calls:
        argv, env = call["argv"], call["env"]
        if any(sentinel in a for a in argv) or sentinel in env.get("PYTEST_ADDOPTS", ""):
            return True
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
        if sentinel in env.get("MK_ARGS", "") and module and reads_make_args(module):
            return True
    return False


def test_help_documents_variables():
    assert "TOKENIZER" in TARGETS["prep-pref"] and "OUT" in TARGETS["prep-wiki"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_documented_variable_reaches_the_program(target, stub_venv, tmp_path):
    log = tmp_path / "calls.jsonl"
    sentinels = {name: NUMERIC.get(name, f"sentinel-{name.lower()}-42") for name in TARGETS[target]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MK_")} | {"STUB_LOG": str(log)}
    work = tmp_path / "checkout"  # the Makefile alone, so that no recipe (rm -rf, a sub-make) touches the repo
    work.mkdir()
    for makefile in [ROOT / "Makefile", *ROOT.glob("*.mk")]:  # and what it includes
        shutil.copy(makefile, work / makefile.name)
    (work / "pyproject.toml").touch()
    os.utime(work / "pyproject.toml", (0, 0))
    r = subprocess.run(["make", "--no-print-directory", "-s", "-C", str(work), target, f"VENV={stub_venv}",
                        *(f"{k}={v}" for k, v in sentinels.items())], cwd=work, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    lost = [name for name, sentinel in sentinels.items() if not reached(sentinel, calls)]
    assert not lost, f"make {target}: {lost} documented in `make help` but never reach the program ({calls})"
