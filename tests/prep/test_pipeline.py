"""The prep engine: determinism, stable splits, dedup, SFT masks, interruption and one-line errors."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from common.outputs import partial_path
from prep.cli import cli
from prep.pipeline import PrepJob, is_val, run_prep
from prep.records import Document, Piece, Skipped
from prep.sources import Chunk, SourceInput
from prep.tokenfile import TokenFileError, open_token_folder
from prep.wiki import run_wiki
from tests.conftest import ROOT
from tests.prep.wiki_data import (
    SLOW_RUN,
    article,
    corpus,
    decoded_docs,
    failing_parse,
    folder_bytes,
    line,
    write,
    write_corpus,
)


def run(src, out, **kw):
    kw = {"workers": 1, "val_fraction": 0.1, "show_progress": False, **kw}
    return run_wiki(src, out, tokenizer="bytes", **kw)


def test_same_input_gives_byte_identical_folders_whatever_workers_and_chunking(tmp_path):
    src = write_corpus(tmp_path / "wiki", 300)
    run(src, tmp_path / "a")
    run(src, tmp_path / "b", workers=2, chunk_bytes=1024)
    run(src, tmp_path / "c", chunk_bytes=777)
    a = folder_bytes(tmp_path / "a")
    assert set(a) == {".zh-mini-llm.json", "meta.json", "train.bin", "train.idx", "val.bin", "val.idx"}
    assert a == folder_bytes(tmp_path / "b") == folder_bytes(tmp_path / "c")
    meta = open_token_folder(tmp_path / "a").meta
    assert meta["splits"]["val"]["docs"] > 0 and meta["records"]["kept"] == 300
    assert "workers" not in meta["options"] and "out" not in meta["options"]


def test_rerun_replaces_the_folder(tmp_path, byte_tokenizer):
    run(write_corpus(tmp_path / "one", 20), tmp_path / "out")
    run(write_corpus(tmp_path / "two", 30, seed=5), tmp_path / "out")
    assert open_token_folder(tmp_path / "out").meta["records"]["kept"] == 30
    assert not partial_path(tmp_path / "out").exists()


def test_val_split_is_a_stable_function_of_the_id(tmp_path, byte_tokenizer):
    keys = [str(i) for i in range(20000)]
    share = sum(is_val(k, 0.05) for k in keys) / len(keys)
    assert 0.04 < share < 0.06
    assert not any(is_val(k, 0.0) for k in keys[:1000])
    # adding articles and moving them between shards never moves an article across splits
    arts = corpus(200)
    write(tmp_path / "x/AA/wiki_00", b"".join(line(a) for a in arts[:120]))
    more = corpus(260)[120:]
    write(tmp_path / "y/AB/wiki_07", b"".join(line(a) for a in reversed(arts)))
    write(tmp_path / "y/AA/wiki_00", b"".join(line(a) for a in more))
    run(tmp_path / "x", tmp_path / "ox", val_fraction=0.2)
    run(tmp_path / "y", tmp_path / "oy", val_fraction=0.2)
    for split in ("train", "val"):
        small, big = decoded_docs(tmp_path / "ox", byte_tokenizer, split), decoded_docs(tmp_path / "oy", byte_tokenizer, split)
        assert small and set(small) <= set(big)


def test_duplicates_are_dropped_across_files_and_splits(tmp_path, byte_tokenizer):
    a = article("1", "数学", "数学是一门学科，研究数量与结构。")
    write(tmp_path / "in/AA/wiki_00", line(a) + line(article("2", "物理", "物理是研究物质运动的自然科学。")))
    write(tmp_path / "in/AB/wiki_00", line({**a, "id": "999"}) + line(a))
    meta = run(tmp_path / "in", tmp_path / "out", val_fraction=0.5)
    assert meta["skipped"]["duplicate"] == {"count": 2, "examples": ["AB/wiki_00:1", "AB/wiki_00:2"]}
    assert meta["records"]["kept"] == 2


def sft_parse(chunk: Chunk, specials) -> list:
    """A toy dialog format on row chunks: exercises masks, turn starts and row locations."""
    out = []
    for n, row in chunk.data:
        if not row.get("reply"):
            out.append(Skipped("empty_reply", f"{chunk.name}:{n}"))
            continue
        s, e = specials.im_start_id, specials.im_end_id
        pieces = [Piece(special_id=s), Piece(text=f"user\n{row['ask']}"), Piece(special_id=e), Piece(text="\n"),
                  Piece(special_id=s), Piece(text="assistant\n"), Piece(text=row["reply"], trained=True),
                  Piece(special_id=e, trained=True), Piece(text="\n"), Piece(special_id=specials.eot_id)]
        out.append(Document(pieces, split_key=row["ask"], dedup_key=row["ask"] + row["reply"],
                            location=f"{chunk.name}:{n}", turn_starts=[0]))
    return out


class RowSource:
    def __init__(self, rows):
        self.rows = rows
        self.inputs = [SourceInput("hub/rows", 100)]

    def chunks(self):
        for k in range(0, len(self.rows), 2):
            yield Chunk("hub/rows", k + 1, [(k + 1 + j, r) for j, r in enumerate(self.rows[k:k + 2])], "rows", 50)


@pytest.mark.parametrize("workers", [1, 2])
def test_sft_kind_writes_masks_and_turn_starts(tmp_path, byte_tokenizer, workers):
    rows = [{"ask": "你好", "reply": "您好！"}, {"ask": "1+1?", "reply": ""}, {"ask": "再见", "reply": "再见。"}]
    job = PrepJob(RowSource(rows), sft_parse, tmp_path / "sft", "sft", {"command": "toy"}, tokenizer="bytes",
                  val_fraction=0.0, workers=workers, with_turns=True, show_progress=False)
    meta = run_prep(job)
    assert meta["skipped"] == {"empty_reply": {"count": 1, "examples": ["hub/rows:2"]}}
    s = open_token_folder(tmp_path / "sft").split("train")
    assert s.n_docs == 2 and list(s.turn_starts) == [0, s.doc_starts[1]]
    for i, reply in enumerate(["您好！", "再见。"]):
        ids, mask = np.asarray(s.doc(i)), np.asarray(s.doc_mask(i))
        assert byte_tokenizer.decode(ids[mask == 1]) == reply + "<|im_end|>"
    assert meta["splits"]["train"]["target_bytes"] == len("您好！再见。".encode())


def test_an_error_mid_run_leaves_no_folder_and_keeps_the_old_one(tmp_path):
    src = write_corpus(tmp_path / "wiki", 200, shards=1)
    old = tmp_path / "out"
    run(write_corpus(tmp_path / "old", 10), old)
    before = folder_bytes(old)
    for workers in (1, 2):
        parse = functools.partial(failing_parse, fail_at=50)
        job = PrepJob(run_wiki_source(src), parse, old, "pretrain", {}, tokenizer="bytes", workers=workers,
                      show_progress=False)
        with pytest.raises(RuntimeError, match="boom"):
            run_prep(job)
        assert folder_bytes(old) == before and not partial_path(old).exists()


def run_wiki_source(src):
    from prep.wiki import wiki_source

    return wiki_source(src, chunk_bytes=1024)


def _start_slow_run(src: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(src), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    train_bin = partial_path(out) / "train.bin"
    deadline = time.time() + 60
    while not (train_bin.exists() and train_bin.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run never started writing"
        time.sleep(0.05)
    return proc


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc to find the workers")
def test_kill_9_mid_run_leaves_nothing_readers_accept_and_a_rerun_gives_the_same_bytes(tmp_path):
    src = write_corpus(tmp_path / "wiki", 150, shards=2)
    out = tmp_path / "out"
    run(write_corpus(tmp_path / "old", 10), out)
    before = folder_bytes(out)
    proc = _start_slow_run(src, out)
    workers = _children(proc.pid)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert len(workers) == 2
        deadline = time.time() + 10
        while not all(_gone(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert all(_gone(w) for w in workers), "orphaned workers did not exit"
    finally:
        for w in workers:
            if not _gone(w):
                os.kill(w, signal.SIGKILL)
    assert folder_bytes(out) == before  # the previous folder is untouched
    with pytest.raises(TokenFileError, match="no meta.json"):
        open_token_folder(partial_path(out))
    run(src, out, val_fraction=0.005)
    run(src, tmp_path / "clean", val_fraction=0.005)
    assert not partial_path(out).exists()
    assert folder_bytes(out) == folder_bytes(tmp_path / "clean")


@pytest.mark.skipif(sys.platform != "linux", reason="signals a process group")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_cleanly_and_removes_the_partial_folder(tmp_path, how):
    src = write_corpus(tmp_path / "wiki", 150, shards=2)
    out = tmp_path / "out"
    proc = _start_slow_run(src, out)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    else:
        proc.terminate()  # what `timeout` or a batch scheduler does: the main process only
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if how == "ctrl-c" else 143), err  # 128 + the signal, as shells expect
    assert err.decode().strip().splitlines() == [f"Error: interrupted: nothing written to {out} "
                                                 "(any earlier folder there is untouched)"]
    assert not out.exists() and not partial_path(out).exists()


def _one_line_error(args) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_missing_or_empty_input_is_a_one_line_error(tmp_path):
    assert "no such file or folder" in _one_line_error(["wiki", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    (tmp_path / "empty/AA").mkdir(parents=True)
    write(tmp_path / "empty/README", b"not a shard")
    assert "no wiki shards" in _one_line_error(["wiki", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_nothing_usable_is_a_one_line_error_and_writes_nothing(tmp_path):
    write(tmp_path / "in/AA/wiki_00", line(article("1", "小条目", "")) + b"not json\n")
    write(tmp_path / "in/AA/wiki_01", b"")
    msg = _one_line_error(["wiki", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--tokenizer", "bytes",
                           "--workers", "1"])
    assert "no usable document" in msg and "stub 1 (e.g. AA/wiki_00:1)" in msg and "empty_file 1" in msg
    assert not (tmp_path / "o").exists() and not partial_path(tmp_path / "o").exists()


def test_an_output_folder_that_is_not_a_token_folder_is_refused(tmp_path):
    src = write_corpus(tmp_path / "wiki", 5)
    write(tmp_path / "mine/notes.txt", b"precious")
    assert "not a token folder" in _one_line_error(["wiki", str(src), "--out", str(tmp_path / "mine"),
                                                    "--tokenizer", "bytes", "--workers", "1"])
    assert (tmp_path / "mine/notes.txt").read_bytes() == b"precious"


def test_cli_wiki_runs_and_bad_options_are_usage_errors(tmp_path):
    src = write_corpus(tmp_path / "wiki", 30)
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["wiki", str(src), "--out", str(out), "--tokenizer", "bytes", "--workers", "1",
                                      "--min-chars", "0", "--val-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    assert "documents kept" in result.output and "wiki summary" in result.output
    meta = open_token_folder(out).meta
    assert meta["options"] == {"command": "wiki", "input": str(src), "tokenizer": "bytes", "val_fraction": 0.2,
                               "min_chars": 0, "to_simplified": False}
    bad = CliRunner().invoke(cli, ["wiki", str(src), "--out", str(out), "--val-fraction", "1.5"])
    assert bad.exit_code == 2 and "--val-fraction" in bad.output
