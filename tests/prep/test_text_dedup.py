"""prep text: near-duplicates removed (and only they), quality filters counted by reason."""

from __future__ import annotations

import random

import pytest

from prep.near_dedup import NearDedup, NearDedupConfig, lsh_bands
from prep.text_filters import QualityFilters, cjk_share, repeated_line_share, top_char_share
from tests.prep.text_data import chinese, docs, prep, skipped, write_rows

NEAR = NearDedupConfig(threshold=0.8)


def small_edit(text: str, rng: random.Random, n: int = 3) -> str:
    """`n` characters replaced: ~5% of the 5-grams of a 300-character text change (Jaccard ~0.9)."""
    chars = list(text)
    for k in rng.sample(range(len(chars)), n):
        chars[k] = "改"
    return "".join(chars)


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    rng = random.Random(7)
    originals = [chinese(rng, 300) for _ in range(30)]
    half = originals[0][:150] + chinese(rng, 150)  # shares half its text with originals[0]: J ~ 0.33
    edits = [small_edit(t, rng) for t in originals[:10]]
    layout = [" ".join(originals[10][i : i + 20] for i in range(0, 300, 20)).upper() + "\n"]  # spaces only
    return {"originals": originals, "half": [half], "edits": edits, "layout": layout}


def test_small_edits_are_removed_and_distinct_documents_kept(tmp_path, byte_tokenizer, corpus):
    rows = [{"text": t} for t in corpus["originals"] + corpus["half"]]
    copies = [{"text": t} for t in corpus["edits"] + corpus["layout"]]
    write_rows(tmp_path / "in/a.jsonl", rows)
    write_rows(tmp_path / "in/b.parquet", copies)  # across inputs and formats
    meta = prep(tmp_path / "in", tmp_path / "out", near_dedup=NEAR)
    assert docs(tmp_path / "out", byte_tokenizer) == corpus["originals"] + corpus["half"]
    assert skipped(meta) == {"near_duplicate": (11, [f"b.parquet:{i}" for i in range(1, 6)])}
    near = meta["near_dedup"]
    assert (near["checked"], near["removed"], near["bands"], near["threshold"]) == (42, 11, 16, 0.8)
    assert near["examples"] == [{"removed": f"b.parquet:{i}", "kept": f"a.jsonl:{i}"} for i in range(1, 6)]
    assert near["library"].startswith("rensa ") and meta["options"]["near_dedup"]["ngram"] == 5
    plain = prep(tmp_path / "in", tmp_path / "plain")
    assert plain["records"]["kept"] == 42 and "near_dedup" not in plain  # off by default


def test_the_first_of_a_cluster_is_kept_and_only_kept_documents_match(tmp_path, byte_tokenizer, corpus):
    a = corpus["originals"][0]
    b = small_edit(a, random.Random(1), 2)
    c = small_edit(b, random.Random(2), 2)  # b is like a and c; c is still like a (4 characters apart)
    rows = [{"text": t} for t in (c, a, b)]
    meta = prep(write_rows(tmp_path / "d.jsonl", rows), tmp_path / "out", near_dedup=NEAR)
    assert docs(tmp_path / "out", byte_tokenizer) == [c]
    assert meta["near_dedup"]["examples"] == [{"removed": "d.jsonl:2", "kept": "d.jsonl:1"},
                                              {"removed": "d.jsonl:3", "kept": "d.jsonl:1"}]


def test_same_documents_kept_for_any_worker_count(tmp_path, corpus):
    rng = random.Random(3)
    texts = corpus["originals"] + [small_edit(t, rng, n) for t in corpus["originals"] for n in (2, 12, 40)]
    rng.shuffle(texts)
    src = write_rows(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    one = prep(src, tmp_path / "one", near_dedup=NEAR, val_fraction=0.1, chunk_bytes=2048)
    two = prep(src, tmp_path / "two", near_dedup=NEAR, val_fraction=0.1, chunk_bytes=2048, workers=2)
    assert one == two and 30 <= one["records"]["kept"] < 100
    for name in ("train.bin", "train.idx", "val.bin", "val.idx", "meta.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_bands_keep_recall_at_the_threshold():
    assert [lsh_bands(t) for t in (0.5, 0.7, 0.8, 0.9, 0.95)] == [64, 32, 16, 16, 8]
    for t in (0.5, 0.7, 0.8, 0.9, 0.95):
        rows = 128 // lsh_bands(t)
        assert 1 - (1 - t**rows) ** lsh_bands(t) >= 0.9


def test_the_index_decides_in_the_order_it_is_given(corpus):
    a, b = corpus["originals"][:2]
    near = NearDedup(NEAR)
    sketches = NEAR.sketches([a, b, small_edit(a, random.Random(0)), a.lower() + "  "])
    assert [near.is_duplicate(s, f"x:{i}") for i, s in enumerate(sketches)] == [False, False, True, True]
    assert near.to_meta()["examples"] == [{"removed": "x:2", "kept": "x:0"}, {"removed": "x:3", "kept": "x:0"}]
    assert NEAR.grams("ab c") == ["abc".encode("utf-32-le")]  # shorter than an n-gram: one gram, no spaces


def test_quality_filter_measures():
    assert cjk_share("中文 text") == pytest.approx(2 / 6) and cjk_share("  ") == 0.0
    assert cjk_share("𠀀𪚥") == 1.0  # Extension B ideographs count
    assert repeated_line_share("首页\n新闻\n首页\n\n首页\n") == pytest.approx(2 / 4)
    assert top_char_share("哈哈哈哈好") == pytest.approx(0.8)


def test_quality_filters_are_optional_and_counted_by_reason(tmp_path, byte_tokenizer):
    good = "这是一篇正常的中文文章，讲述了城市的历史与文化。\n第二段继续介绍当地的河流和铁路。"
    rows = [
        {"text": good},                                                         # 1 kept
        {"text": "This page is mostly English with 一点 Chinese."},              # 2 low_cjk
        {"text": "首页\n新闻中心\n首页\n新闻中心\n首页\n新闻中心\n联系我们"},        # 3 repeated_lines
        {"text": "哈" * 30 + "好笑的视频"},                                       # 4 repeated_char
    ]
    src = write_rows(tmp_path / "d.jsonl", rows)
    meta = prep(src, tmp_path / "all")
    assert meta["records"]["kept"] == 4 and meta["skipped"] == {}
    filters = QualityFilters(min_cjk=0.5, max_repeated_lines=0.3, max_char_share=0.3)
    meta = prep(src, tmp_path / "out", filters=filters)
    assert docs(tmp_path / "out", byte_tokenizer) == [good]
    assert skipped(meta) == {"low_cjk": (1, ["d.jsonl:2"]), "repeated_lines": (1, ["d.jsonl:3"]),
                             "repeated_char": (1, ["d.jsonl:4"])}
    assert (meta["options"]["min_cjk"], meta["options"]["max_char_share"]) == (0.5, 0.3)
