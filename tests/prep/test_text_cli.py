"""prep text from the command line and from `make`: options reach meta.json, unusable input is one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from prep.cli import cli
from prep.tokenfile import open_token_folder
from tests.conftest import ROOT
from tests.prep.text_data import docs, texts, write, write_rows

BYTES = ["--tokenizer", "bytes", "--workers", "1"]


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_cli_options_reach_the_run_and_meta(tmp_path, byte_tokenizer):
    rows = [{"title": f"标题{i}", "body": t} for i, t in enumerate(texts(5))]
    src = write_rows(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["text", str(src), "--out", str(out), *BYTES, "--field", "title,body",
                                      "--val-fraction", "0", "--near-dedup", "--threshold", "0.9",
                                      "--min-cjk", "0.5", "--max-char-share", "0.5"])
    assert result.exit_code == 0, result.output
    assert "text summary" in result.output and "documents kept" in result.output
    assert docs(out, byte_tokenizer) == [f"{r['title']}\n{r['body']}" for r in rows]
    options = open_token_folder(out).meta["options"]
    assert options["fields"] == ["title", "body"] and options["near_dedup"]["threshold"] == 0.9
    assert (options["min_cjk"], options["max_repeated_lines"], options["max_char_share"]) == (0.5, None, 0.5)
    bad = CliRunner().invoke(cli, ["text", str(src), "--out", str(out), "--threshold", "0.2"])
    assert bad.exit_code == 2 and "--threshold" in bad.output
    assert CliRunner().invoke(cli, ["text", str(src), "--field", " , "]).exit_code == 2


@pytest.mark.parametrize("option, value", [("--min-cjk", "nan"), ("--max-repeated-lines", "nan"),
                                           ("--max-char-share", "inf"), ("--threshold", "nan"),
                                           ("--val-fraction", "nan"), ("--workers", str(10**9)),
                                           ("--min-cjk", "-0.5")])
def test_every_number_is_checked_where_it_is_typed(tmp_path, option, value):
    """NaN slipped through click's ranges (every comparison with it is false): a NaN filter kept or dropped
    everything silently, a billion --workers forked until memory ran out. The input does not exist: the
    value is refused before it is looked at (and a run that never checked it stops there, not in a fork)."""
    r = CliRunner().invoke(cli, ["text", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"), option, value])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_missing_empty_or_unusable_input_is_one_line_and_no_folder(tmp_path):
    out = tmp_path / "out"
    assert "no such file or folder" in one_line_error(["text", str(tmp_path / "nope.jsonl"), "--out", str(out)])
    write(tmp_path / "empty/readme.md", b"# not a corpus")
    assert "no text files found" in one_line_error(["text", str(tmp_path / "empty"), "--out", str(out)])
    write_rows(tmp_path / "bad/a.jsonl", [{"content": "没有 text 字段的一行，足够长。"}])
    write(tmp_path / "bad/b.txt", b"")
    message = one_line_error(["text", str(tmp_path / "bad"), "--out", str(out), *BYTES])
    assert "no usable document" in message and "missing_field 1 (e.g. a.jsonl:1)" in message
    assert "empty_file 1 (e.g. b.txt)" in message
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_prep_text_passes_paths_byte_for_byte(tmp_path, byte_tokenizer):
    """SRC and OUT with spaces, quotes, `$` and Chinese reach the program as typed."""
    src = write_rows(tmp_path / 'in put/中文 "语料" $HOME.jsonl', [{"text": texts(1)[0]}])
    out = tmp_path / "out dir/web $x"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "prep-text", f"SRC={src}", f"OUT={out}",
                             f"PY={sys.executable}", "STAMP=", "ARGS=--tokenizer bytes --workers 1"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert docs(out, byte_tokenizer) == texts(1)
    usage = subprocess.run(["make", "--no-print-directory", "prep-text", "STAMP="], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: make prep-text SRC=" in usage.stdout
