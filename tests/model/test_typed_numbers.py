"""Every number a user types into a model command is checked where it is typed: NaN, infinity, negative,
overflowing and absurd values are one line at once (before any checkpoint is read), never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from model.cli import cli

BAD = [
    ("sample", "--temperature", "nan"),
    ("sample", "--temperature", "inf"),
    ("sample", "--top-p", "nan"),
    ("sample", "--repetition-penalty", "inf"),
    ("sample", "--repetition-penalty", "1e30"),
    ("sample", "--repetition-penalty", "1e-30"),
    ("sample", "--max-new-tokens", "1000000000000"),
    ("sample", "--num-samples", "1000000000"),
    ("chat", "--temperature", "-1"),
    ("serve", "--max-batch", "1000000000"),
    ("serve", "--threads", "1000000000"),
    ("serve", "--max-body-kb", str(10**30)),
    ("harness", "--limit", "nan"),
    ("harness", "--limit", "-5"),
    ("harness", "--limit", "inf"),
    ("harness", "--seed", "-1"),
    ("harness", "--bootstrap-iters", str(10**12)),
    ("harness", "--batch-size", str(10**9)),
    ("bpb", "--batch-size", str(10**9)),
    ("bpb", "--context", str(10**12)),
]


@pytest.mark.parametrize("command, option, value", BAD)
def test_bad_numbers_are_one_line_before_loading(tmp_path, command, option, value):
    where = ["--model", str(tmp_path / "missing"), "--text", str(tmp_path)] if command == "bpb" else [
        "--ckpt", str(tmp_path / "missing")]
    r = CliRunner().invoke(cli, [command, *where, option, value])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}'" in r.output and "Traceback" not in r.output
    assert "missing" not in r.output  # refused before the checkpoint was looked at
