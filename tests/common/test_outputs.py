"""common.outputs: what every writer of the project relies on (typed folders, one writer, full disks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from common.outputs import (
    MANIFEST,
    OutputError,
    OutputFolder,
    atomic_file,
    output_lock,
    partial_path,
    write_json_atomic,
)
from tests.conftest import ROOT


def build(out, kind="demo", files=None):
    with OutputFolder(out, kind, "demo folder") as folder:
        for name, text in (files or {"a.txt": "A"}).items():
            folder.path(name).parent.mkdir(parents=True, exist_ok=True)
            folder.path(name).write_text(text)
        folder.commit()


def test_a_folder_is_swapped_in_with_a_manifest_and_replaced_by_the_same_kind(tmp_path):
    out = tmp_path / "out"
    build(out, files={"a.txt": "A", "sub/b.txt": "B"})
    assert json.loads((out / MANIFEST).read_text()) == {"made_by": "zh-mini-llm", "kind": "demo",
                                                        "files": ["a.txt", "sub/b.txt"]}
    build(out, files={"c.txt": "C"})
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "c.txt"]
    assert not partial_path(out).exists()


@pytest.mark.parametrize("setup, message", [
    (lambda out: out.write_text("x"), "exists and is not a folder"),
    (lambda out: (out.mkdir(), (out / "mine.txt").write_text("x")), "not a demo folder made by this project"),
])
def test_anything_else_in_the_way_is_refused_and_untouched(tmp_path, setup, message):
    out = tmp_path / "out"
    setup(out)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(OutputError, match=message):
        build(out)
    assert sorted(p.name for p in tmp_path.rglob("*") if not p.name.startswith(".out.lock")) == before


def test_other_kind_and_foreign_files_are_refused(tmp_path):
    out = tmp_path / "out"
    build(out)
    with pytest.raises(OutputError, match="holds a demo folder, not a other one"):
        build(out, kind="other")
    (out / "notes.md").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write \(notes\.md\)"):
        build(out)
    assert (out / "notes.md").read_text() == "mine" and (out / "a.txt").read_text() == "A"


def test_an_error_while_building_leaves_the_previous_folder(tmp_path):
    out = tmp_path / "out"
    build(out)
    with pytest.raises(RuntimeError), OutputFolder(out, "demo", "demo folder") as folder:
        folder.path("a.txt").write_text("half")
        raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "A" and not partial_path(out).exists()


def test_a_second_writer_is_refused_at_once_with_the_holders_pid(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from common.outputs import output_lock\n"
         "with output_lock(sys.argv[1], 'demo'):\n    print('held', flush=True); time.sleep(60)", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"in use by another demo folder \(pid {holder.pid}\)"):
            build(out)
    finally:
        holder.kill()
        holder.wait()
    build(out)  # the kernel released the killed holder's lock: no stale lock
    with output_lock(out, "demo"):
        pass


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(small_disk):
    disk = small_disk("64k")
    out = disk / "out"
    build(out)
    with pytest.raises(OutputError, match="No space left on device.*was not written"):
        build(out, files={"big.bin": "x" * 200_000})
    assert (out / "a.txt").read_text() == "A" and sorted(p.name for p in disk.iterdir()) == [".out.lock", "out"]


def test_a_read_only_disk_is_one_line(small_disk):
    disk = small_disk(read_only=True)
    with pytest.raises(OutputError, match="Read-only file system"):
        build(disk / "out")
    with pytest.raises(OutputError, match="Read-only file system"):
        write_json_atomic(disk / "x.json", {"a": 1})


def test_atomic_file_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "f.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise ValueError("boom")
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    write_json_atomic(path, {"a": float("nan"), "b": [float("inf"), 2.5]})  # strict JSON: never a bare NaN
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 2.5]}
