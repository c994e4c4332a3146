"""Held-out real data with the real Qwen2 tokenizer: 3 (and 8) shards merged equal the unsharded folder,
with duplicates planted across shards (skipped where ../shared is absent)."""

from __future__ import annotations

import json

from prep.near_dedup import NearDedupConfig
from prep.text import run_text
from prep.wiki import run_wiki
from tests.conftest import shared_path
from tests.prep.shard_checks import assert_merge_equals
from tests.prep.text_data import jsonl_bytes
from tests.prep.wiki_data import write

QUIET = {"workers": 2, "show_progress": False, "val_fraction": 0.05}


def test_real_wiki_three_and_eight_shards(tmp_path):
    """The first 200 articles of each of the 6 wiki_zh files; 3 articles of wiki_00 again at the end of wiki_05."""
    files = sorted(shared_path("data", "wiki_zh", "AA").iterdir())
    heads = [f.read_bytes().splitlines(keepends=True)[:200] for f in files]
    heads[-1] += [line for line in heads[0][:40] if len(line) > 400][:3]
    for f, lines in zip(files, heads, strict=True):
        write(tmp_path / "wiki" / "AA" / f.name, b"".join(lines))
    for meta in assert_merge_equals(run_wiki, tmp_path / "wiki", tmp_path, ns=(3, 8), **QUIET):
        assert meta["skipped"]["duplicate"]["count"] == 3 and meta["splits"]["val"]["docs"] > 0


def test_real_text_corpus_with_near_dedup_three_shards(tmp_path):
    """Belle's replies as a text corpus in 4 files, an exact copy and an edited copy planted in a later shard."""
    rows = [json.loads(line) for line in shared_path("data", "belle", "Belle_open_source_1k.json").open(encoding="utf-8")]
    docs = [{"id": str(i), "text": r["output"]} for i, r in enumerate(rows) if len(r["output"]) > 200][:240]
    parts = [docs[k::4] for k in range(4)]
    parts[3] += [{**parts[0][1], "id": "copy"}, {"id": "edited", "text": parts[0][2]["text"][:-5] + "（完）"}]
    for k, part in enumerate(parts):
        write(tmp_path / "in" / f"part{k}.jsonl", jsonl_bytes(part))
    kw = {**QUIET, "near_dedup": NearDedupConfig(0.8), "id_field": "id"}
    meta = assert_merge_equals(run_text, tmp_path / "in", tmp_path, ns=(3,), **kw)[0]
    assert meta["skipped"]["duplicate"]["count"] >= 1 and meta["near_dedup"]["removed"] >= 1
