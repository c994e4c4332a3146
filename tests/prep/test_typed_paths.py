"""Paths behave as typed: `~` is expanded wherever a path is taken (make hands it over literally), an
absolute --glob inside the input works and one outside is one line, and a mistyped local path is
"no such file" at once, never a hub lookup."""

from __future__ import annotations

import time

from click.testing import CliRunner

from prep.cli import cli
from prep.tokenizer import TokenizerError, load_tokenizer
from tests.prep.text_data import docs, texts, write_rows

BYTES = ["--tokenizer", "bytes", "--workers", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_tilde_is_expanded_in_inputs_and_outputs(tmp_path, monkeypatch, byte_tokenizer):
    monkeypatch.setenv("HOME", str(tmp_path))
    rows = [{"text": t} for t in texts(3)]
    write_rows(tmp_path / "corpus" / "a.jsonl", rows)
    r = invoke("text", "~/corpus", "--out", "~/out", *BYTES, "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    assert docs(tmp_path / "out", byte_tokenizer) == [row["text"] for row in rows]
    assert not (tmp_path / "~").exists()


def test_an_absolute_glob_inside_the_input_works_and_one_outside_is_one_line(tmp_path, byte_tokenizer):
    rows = [{"text": t} for t in texts(2)]
    write_rows(tmp_path / "in" / "part-1.data", rows)
    r = invoke("text", tmp_path / "in", "--out", tmp_path / "out", *BYTES, "--val-fraction", "0",
               "--glob", tmp_path / "in" / "part-*")
    assert r.exit_code == 0, r.output
    assert docs(tmp_path / "out", byte_tokenizer) == [row["text"] for row in rows]
    for pattern in ("/etc/*.conf", "../*.jsonl"):
        r = invoke("text", tmp_path / "in", "--out", tmp_path / "other", *BYTES, "--glob", pattern)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and "--glob" in lines[0] and "Traceback" not in r.output, r.output


def test_a_mistyped_local_path_is_no_such_file_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    started = time.monotonic()
    r = invoke("text", "data/wikii", "--out", tmp_path / "out", *BYTES)
    assert r.exit_code == 1 and "no such file" in r.output and "hub" not in r.output, r.output
    for spec in ("data/my_tokenizer", "./tok", "~/no-such-tokenizer", "a/b/c"):
        try:
            load_tokenizer(spec)
        except TokenizerError as e:
            assert "no such tokenizer folder" in str(e), e
        else:
            raise AssertionError(f"{spec} loaded")
    assert time.monotonic() - started < 10  # nothing asked of the hub (offline, it would time out or retry)
