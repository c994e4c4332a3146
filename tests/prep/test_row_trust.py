"""Every reader validates text the same way, and format detection looks past rows it cannot use.

Class 1: a lone surrogate (a JSON ``\\ud800`` escape) anywhere a reader takes text from -- prompt, reply,
system, a text field, a wiki article, in JSON lines or a JSON array -- is one counted ``invalid_unicode``
skip, never a traceback, and the rows beside it are kept. Class 2: a first row over the size cap is one
``too_large`` skip and the file's format is still detected from the rows after it.
"""

from __future__ import annotations

import json

import pytest

from prep.pref import run_pref
from prep.sft import run_sft
from prep.text import run_text
from prep.wiki import run_wiki

BAD = "\ud800"
OPTS = {"tokenizer": "bytes", "val_fraction": 0.0, "workers": 1, "show_progress": False}
TRL = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}
ALPACA = {"instruction": "2+2?", "input": "", "output": "4"}


def write(path, rows, array=False):
    """JSON with ``ensure_ascii``: a lone surrogate is written as the escape a scraped dump holds."""
    if array:
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def counts(meta) -> dict:
    return {k: v["count"] for k, v in meta["skipped"].items()}


def docs(meta) -> int:
    return sum(s["docs"] for s in meta["splits"].values())


PREF_BAD = [
    {**TRL, "prompt": [{"role": "user", "content": "hi" + BAD}]},
    {**TRL, "chosen": "4" + BAD},
    {**TRL, "rejected": [{"role": "assistant", "content": BAD}]},
    {"system": "be" + BAD, "history": [], "question": "q", "response_chosen": "a", "response_rejected": "b"},
]


@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "array"])
@pytest.mark.parametrize("bad", PREF_BAD, ids=["prompt", "chosen", "rejected", "system"])
def test_pref_lone_surrogate_is_a_counted_skip(tmp_path, bad, array):
    name = "in.json" if array else "in.jsonl"
    write(tmp_path / name, [TRL, bad, {**TRL, "chosen": "four"}], array)
    meta = run_pref(tmp_path / name, tmp_path / "out", max_len=1000, **OPTS)
    assert counts(meta) == {"invalid_unicode": 1} and docs(meta) == 2


def test_pref_lone_surrogate_in_a_pair_too_long_to_count_by_bytes(tmp_path):
    long = {**TRL, "chosen": "x" * 300 + BAD}  # past the byte bound, so the pair is tokenized to fit it
    write(tmp_path / "in.jsonl", [TRL, long])
    meta = run_pref(tmp_path / "in.jsonl", tmp_path / "out", max_len=100, **OPTS)
    assert counts(meta) == {"invalid_unicode": 1} and docs(meta) == 1


@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "array"])
def test_sft_lone_surrogate_is_a_counted_skip(tmp_path, array):
    name = "in.json" if array else "in.jsonl"
    write(tmp_path / name, [ALPACA, {**ALPACA, "output": BAD + "4"}, {**ALPACA, "output": "four"}], array)
    meta = run_sft(tmp_path / name, tmp_path / "out", system="", **OPTS)
    assert counts(meta) == {"invalid_unicode": 1} and docs(meta) == 2


@pytest.mark.parametrize("simplified", [False, True], ids=["plain", "to-simplified"])
@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "array"])
def test_text_lone_surrogate_is_a_counted_skip(tmp_path, array, simplified):
    if simplified:
        pytest.importorskip("opencc")
    name = "in.json" if array else "in.jsonl"
    rows = [{"text": "一段足够长的中文文本。" * 3}, {"text": "坏的文本" + BAD + "。" * 30}, {"text": "另一段中文文本。" * 4}]
    write(tmp_path / name, rows, array)
    meta = run_text(tmp_path / name, tmp_path / "out", min_chars=1, to_simplified=simplified, **OPTS)
    assert counts(meta) == {"invalid_unicode": 1} and docs(meta) == 2


@pytest.mark.parametrize("simplified", [False, True], ids=["plain", "to-simplified"])
def test_wiki_lone_surrogate_is_a_counted_skip(tmp_path, simplified):
    if simplified:
        pytest.importorskip("opencc")
    rows = [{"id": str(i), "url": "", "title": "T", "text": f"T\n{i}" + ("正文" + (BAD if i == 1 else "")) * 40}
            for i in range(3)]
    (tmp_path / "AA").mkdir()
    write(tmp_path / "AA" / "wiki_00", rows)
    meta = run_wiki(tmp_path, tmp_path / "out", min_chars=1, to_simplified=simplified, **OPTS)
    assert counts(meta) == {"invalid_unicode": 1} and docs(meta) == 2


CAP = 1 << 20


@pytest.fixture
def small_cap(monkeypatch):
    """A 1 MiB record cap, so a row over it is cheap to write."""
    from prep import row_sources, sft, sources

    for module in (sources, row_sources, sft):
        monkeypatch.setattr(module, "MAX_RECORD_BYTES", CAP)


def huge_row(row: dict) -> dict:
    return {**row, "padding": 'x"\\[{' * CAP}  # quotes, backslashes and brackets inside its strings


@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "array"])
def test_pref_huge_first_row_does_not_hide_the_file(tmp_path, array, small_cap):
    name = "in.json" if array else "in.jsonl"
    write(tmp_path / name, [huge_row(TRL), TRL, {**TRL, "chosen": "four"}], array)
    meta = run_pref(tmp_path / name, tmp_path / "out", max_len=1000, **OPTS)
    assert counts(meta) == {"too_large": 1} and docs(meta) == 2


@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "array"])
def test_sft_huge_first_row_does_not_hide_the_file(tmp_path, array, small_cap):
    name = "in.json" if array else "in.jsonl"
    write(tmp_path / name, [huge_row(ALPACA), ALPACA, {**ALPACA, "output": "four"}], array)
    meta = run_sft(tmp_path / name, tmp_path / "out", system="", **OPTS)
    assert counts(meta) == {"too_large": 1} and docs(meta) == 2


def test_detection_looks_past_many_unusable_rows(tmp_path):
    rows = [[1, 2]] * 150 + [ALPACA, {**ALPACA, "output": "four"}]  # 150 rows that are not objects first
    write(tmp_path / "in.json", rows, array=True)
    meta = run_sft(tmp_path / "in.json", tmp_path / "out", system="", **OPTS)
    assert docs(meta) == 2 and "unknown_format" not in counts(meta)


def test_text_array_huge_middle_element_is_read_past(tmp_path, small_cap):
    texts = [f"第{i}段中文文本。" * 3 for i in range(4)]
    rows = [{"text": texts[0]}, {"text": texts[1], "meta": ["x\\\"]", {"deep": 'y"' * CAP}]}, {"text": texts[2]},
            "z" * (2 * CAP), {"text": texts[3]}]
    (tmp_path / "in.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    meta = run_text(tmp_path / "in.json", tmp_path / "out", min_chars=1, **OPTS)
    assert meta["skipped"]["too_large"]["count"] == 2 and docs(meta) == 3
    assert meta["skipped"]["too_large"]["examples"][:2] == ["in.json:3", "in.json:5"]


def test_sft_system_prompt_that_is_not_text_is_one_line(tmp_path):
    from prep.records import PrepError

    write(tmp_path / "in.jsonl", [ALPACA])
    with pytest.raises(PrepError, match="--system: not valid UTF-8"):
        run_sft(tmp_path / "in.jsonl", tmp_path / "out", system="be \udcff brief", **OPTS)
    assert not (tmp_path / "out").exists()
