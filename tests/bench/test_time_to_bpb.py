"""bench.time_to_bpb runs both sides from the same raw text and prints each side's bpb and the ratio."""

from __future__ import annotations

import re

from click.testing import CliRunner

from bench.time_to_bpb import main


def test_both_sides_train_for_the_budget_and_the_ratio_is_theirs(tmp_path):
    result = CliRunner().invoke(main, ["--wiki", "sample_data/wiki_zh", "--seconds", "1", "--vocab-size", "1024",
                                       "--val-fraction", "0.1", "--out", str(tmp_path), "--set", "n_layer=1",
                                       "--set", "n_head=2", "--set", "n_embd=32", "--set", "eval_blocks=1", "--set", "block_size=16",
                                       "--set", "batch_size=2", "--set", "micro_batch_size=2"])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"│ (seed|modern)\s.*?│\s+([\d.]+) │\n", result.output)
    assert [name for name, _ in rows] == ["seed", "modern"]
    line = re.search(r"seed ([\d.]+), modern ([\d.]+) val bpb; modern / seed val bpb at equal wall-clock: ([\d.]+)",
                     result.output)
    seed, modern, ratio = (float(x) for x in line.groups())
    assert abs(ratio - modern / seed) < 2e-3
    assert (tmp_path / "modern" / "vocab" / "cut_vocab.json").is_file()  # the modern side's own cut
