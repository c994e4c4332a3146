"""prep vocab over shards sums their stored id counts and equals prep vocab on the merged folder; prep remap
per shard then merge equals remap of the merged folder (the real Qwen2 tokenizer, the bundled wiki sample)."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from prep.cli import cli
from prep.merge import merge_shards
from prep.remap import remap_folder
from prep.vocab_build import build_vocab
from prep.wiki import run_wiki
from tests.conftest import ROOT
from tests.prep.shard_checks import run_shards, token_files
from tests.prep.wiki_data import write

QUIET = {"workers": 1, "show_progress": False, "val_fraction": 0.2}


def test_vocab_over_shards_equals_vocab_on_the_merged_folder_and_remap_runs_per_shard(tmp_path):
    lines = (ROOT / "sample_data" / "wiki_zh" / "AA" / "wiki_00").read_bytes().splitlines(keepends=True)
    for k in range(4):  # an article of shard 0 again in shard 2: the merge drops it, so must the counts
        write(tmp_path / "wiki" / "AA" / f"wiki_0{k}", b"".join(lines[k::4]) + (lines[0] if k == 3 else b""))
    shards = run_shards(run_wiki, tmp_path / "wiki", tmp_path / "shards", 3, **QUIET)
    merged = tmp_path / "merged"
    assert merge_shards([shards], merged)["skipped"]["duplicate"]["count"] == 1

    result = CliRunner().invoke(cli, ["vocab", str(shards), "--size", "1024", "--splits", "all",
                                      "--out", str(tmp_path / "v-shards")])
    assert result.exit_code == 0, result.output
    on_merged = build_vocab([merged], tmp_path / "v-merged", 1024, ("train", "val"))
    on_shards = json.loads((tmp_path / "v-shards" / "cut_vocab.json").read_text())
    assert on_shards["kept_ids"] == on_merged["kept_ids"]
    for key in ("tokens", "distinct_ids", "coverage", "splits"):
        assert on_shards["counted"][key] == on_merged["counted"][key]

    vocab = tmp_path / "v4k"  # keeps every id of the sample, so every folder remaps
    build_vocab([merged], vocab, 4096, ("train", "val"))
    for i in range(3):
        remap_folder(shards / f"shard-{i}", str(vocab), tmp_path / "remapped" / f"shard-{i}")
    merge_shards([tmp_path / "remapped"], tmp_path / "merged-remapped")
    remap_folder(merged, str(vocab), tmp_path / "remapped-merged")
    a, b = token_files(tmp_path / "merged-remapped"), token_files(tmp_path / "remapped-merged")
    assert {k: v for k, v in a.items() if k != "meta.json"} == {k: v for k, v in b.items() if k != "meta.json"}
    assert np.fromfile(tmp_path / "remapped-merged" / "train.bin", "<u4").max() < 4096
