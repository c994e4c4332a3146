"""datatrove's LocalPipelineExecutor runs prep shards as 3 tasks; the merge equals the unsharded folder."""

from __future__ import annotations

import pytest

from prep.wiki import run_wiki
from tests.prep.shard_checks import token_files
from tests.prep.test_shards import QUIET, wiki_corpus

pytest.importorskip("datatrove", reason="the optional `scale` extra (datatrove) is not installed")


def test_local_executor_three_tasks_then_merge_equals_unsharded(tmp_path):
    from datatrove.executor import LocalPipelineExecutor

    from prep.datatrove_step import MergeShards, PrepShard, shard_folder

    src = wiki_corpus(tmp_path / "wiki")
    options = {"tokenizer": "bytes", "val_fraction": 0.2, "workers": 1}
    shards = LocalPipelineExecutor([PrepShard("wiki", src, tmp_path / "shards", **options)], tasks=3, workers=1,
                                   logging_dir=str(tmp_path / "logs" / "shards"))
    merge = LocalPipelineExecutor([MergeShards(tmp_path / "shards", tmp_path / "merged")], tasks=1, workers=1,
                                  logging_dir=str(tmp_path / "logs" / "merge"), depends=shards)
    merge.run()
    made = sorted(p.name for p in (tmp_path / "shards").iterdir() if not p.name.startswith("."))  # (locks)
    assert made == [shard_folder("", i, 3).name for i in range(3)]
    run_wiki(src, tmp_path / "full", val_fraction=0.2, **QUIET)
    assert token_files(tmp_path / "merged") == token_files(tmp_path / "full")
