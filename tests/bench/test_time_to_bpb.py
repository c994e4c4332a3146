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
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"│ (seed|modern)\s.*?│\s+([\d.]+) │\n", result.output)}
    ratio = float(re.search(r"modern / seed val bpb at equal wall-clock: ([\d.]+)", result.output).group(1))
    assert set(rows) == {"seed", "modern"} and abs(ratio - rows["modern"] / rows["seed"]) < 2e-3
    assert (tmp_path / "modern" / "vocab" / "cut_vocab.json").is_file()  # the modern side's own cut
