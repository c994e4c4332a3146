"""prep wiki on hand-made inputs: every kind of bad line, both formats, stubs, duplicates, --to-simplified."""

from __future__ import annotations

import json

import pytest

from prep.records import Document, Repaired, Skipped
from prep.sources import Chunk
from prep.tokenizer import SpecialIds
from prep.wiki import detect_wiki_format, parse_wiki, run_wiki
from tests.prep.wiki_data import article, decoded_docs, line, write

EOT = "<|endoftext|>"
SPECIALS = SpecialIds(256, 257, 258)


def run(src, out, **kw):
    kw.setdefault("workers", 1)
    return run_wiki(src, out, tokenizer="bytes", val_fraction=0.0, show_progress=False, **kw)


def test_every_bad_line_is_counted_with_its_location_and_the_run_goes_on(tmp_path, byte_tokenizer):
    a, b, c, d = (article(str(i), f"标题{i}", f"正文{i}，足够长的一段文字。") for i in range(1, 5))
    shard = b"".join([
        line(a),                                                            # 1 kept
        b'{"id": "2", "title": "x", "text": \n',                             # 2 invalid_json
        b"[1, 2, 3]\n",                                                      # 3 not_an_object
        line({"id": "4", "title": "t"}),                                     # 4 missing_field
        line({"id": 5, "title": "t", "text": "t\n\nlong enough body"}),      # 5 non_string_field
        b'{"id": "6", "title": "x", "text": "\xff\xfe broken"}\n',           # 6 invalid_utf8
        b"\xef\xbb\xbf" + line(b),                                           # 7 bom_stripped, kept
        line(c)[:-1] + b"\r\n",                                              # 8 crlf_line_end, kept
        line(article("9", "小条目", "")),                                     # 9 stub
        line({**a, "id": "10"}),                                             # 10 duplicate of line 1
        b"\n",                                                               # 11 blank_line
        line(d),                                                             # 12 kept
        b'{"id": "13", "title": "cut off", "te',                             # 13 truncated_last_line
    ])
    write(tmp_path / "in/AA/wiki_00", shard)
    write(tmp_path / "in/AA/wiki_01", b"")                                    # empty_file
    write(tmp_path / "in/AB/wiki_00", line(article("20", "末行", "没有换行符的最后一行也是完整的。"))[:-1])

    meta = run(tmp_path / "in", tmp_path / "out")

    f = "AA/wiki_00"
    assert meta["skipped"] == {
        "invalid_json": {"count": 1, "examples": [f"{f}:2"]},
        "not_an_object": {"count": 1, "examples": [f"{f}:3"]},
        "missing_field": {"count": 1, "examples": [f"{f}:4"]},
        "non_string_field": {"count": 1, "examples": [f"{f}:5"]},
        "invalid_utf8": {"count": 1, "examples": [f"{f}:6"]},
        "stub": {"count": 1, "examples": [f"{f}:9"]},
        "duplicate": {"count": 1, "examples": [f"{f}:10"]},
        "truncated_last_line": {"count": 1, "examples": [f"{f}:13"]},
        "empty_file": {"count": 1, "examples": ["AA/wiki_01"]},
    }
    assert meta["repaired"] == {
        "bom_stripped": {"count": 1, "examples": [f"{f}:7"]},
        "crlf_line_end": {"count": 1, "examples": [f"{f}:8"]},
        "blank_line": {"count": 1, "examples": [f"{f}:11"]},
        "no_final_newline": {"count": 1, "examples": ["AB/wiki_00:1"]},
    }
    assert meta["records"]["read"] == 13 and meta["records"]["kept"] == 5
    assert [(s["path"], s["records_read"], s["records_kept"]) for s in meta["sources"]] == [
        ("AA/wiki_00", 12, 4), ("AA/wiki_01", 0, 0), ("AB/wiki_00", 1, 1)]
    texts = [t["text"] for t in (a, b, c, d)] + ["末行\n\n没有换行符的最后一行也是完整的。\n"]
    assert decoded_docs(tmp_path / "out", byte_tokenizer) == [t + EOT for t in texts]


def test_more_than_five_examples_keeps_the_first_five(tmp_path):
    good = line(article("1", "好", "一篇正常的文章，足够长。"))
    write(tmp_path / "wiki_00", good + b"not json\n" * 8)
    meta = run(tmp_path / "wiki_00", tmp_path / "out")
    assert meta["skipped"]["invalid_json"] == {"count": 8, "examples": [f"wiki_00:{i}" for i in range(2, 7)]}


def test_wikiextractor_text_gives_the_same_documents_as_json_lines(tmp_path, byte_tokenizer):
    arts = [article("11", "数学", "数学是研究数量、结构以及空间等概念的一门学科。\n历史.\n古代。"),
            article("12", "物理学", "物理学是研究物质及其运动规律的自然科学。")]
    doc = "".join(f'<doc id="{a["id"]}" url="{a["url"]}" title="{a["title"]}">\n{a["text"]}</doc>\n' for a in arts)
    write(tmp_path / "we/AA/wiki_00", doc.encode())
    write(tmp_path / "js/AA/wiki_00", b"".join(line(a) for a in arts))
    m1 = run(tmp_path / "we", tmp_path / "o1")
    m2 = run(tmp_path / "js", tmp_path / "o2")
    assert (tmp_path / "o1/train.bin").read_bytes() == (tmp_path / "o2/train.bin").read_bytes()
    assert m1["records"] == m2["records"] and m1["skipped"] == {}
    assert decoded_docs(tmp_path / "o1", byte_tokenizer)[0] == arts[0]["text"] + EOT


def test_wikiextractor_tag_errors_are_skipped_by_reason(tmp_path, byte_tokenizer):
    body = "正文足够长，不是小条目。"
    text = (
        "stray text before any document\n"                          # 1 text_outside_doc
        f'<doc id="1" url="u" title="甲">\n甲\n\n{body}\n</doc>\n'   # 2-6 kept
        f'<doc url="u" title="乙">\n乙\n\n{body}\n</doc>\n'          # 7 bad_doc_header
        f'<doc id="3" url="u" title="丙">\r\n丙\r\n\r\n{body}\r\n</doc>\r\n'  # 12 crlf, kept
        f'<doc id="4" url="u" title="丁">\n丁\n\n'                   # 17 unclosed_doc
        f'<doc id="5" url="u" title="戊&amp;己">\n戊&己\n\n{body}\n</doc>\n'  # 20 kept
        f'<doc id="6" url="u" title="庚">\n庚\n\n{body}\n'           # 25 truncated_doc
    )
    write(tmp_path / "wiki_00", text.encode())
    out = tmp_path / "out"
    meta = run(tmp_path / "wiki_00", out, min_chars=len(body))
    assert {r: e["examples"] for r, e in meta["skipped"].items()} == {
        "text_outside_doc": ["wiki_00:1"], "bad_doc_header": ["wiki_00:7"], "unclosed_doc": ["wiki_00:17"],
        "truncated_doc": ["wiki_00:25"]}
    assert meta["repaired"] == {"crlf_line_end": {"count": 1, "examples": ["wiki_00:12"]}}
    assert meta["records"]["kept"] == 3
    docs = decoded_docs(out, byte_tokenizer)
    assert docs[1] == f"丙\n\n{body}\n" + EOT  # CR dropped
    assert docs[2] == f"戊&己\n\n{body}\n" + EOT


def test_format_is_detected_per_file_by_content():
    assert detect_wiki_format(b'{"id": "1"}\n') == "jsonl"
    assert detect_wiki_format(b'\xef\xbb\xbf\n<doc id="1" url="u" title="t">\n') == "wikiextractor"
    assert detect_wiki_format(b"garbage") == "jsonl"  # then every line is counted as invalid_json
    assert detect_wiki_format(b"junk\n<doc id=\"1\">\n") == "wikiextractor"


def test_stub_threshold_counts_the_body_after_the_title():
    text = b"".join(line(article(str(i), "标题", "字" * n)) for i, n in enumerate([0, 3, 9, 10, 40]))
    chunk = Chunk("wiki_00", 1, text, "jsonl", len(text))
    kept = [r.split_key for r in parse_wiki(chunk, SPECIALS, min_chars=10) if isinstance(r, Document)]
    assert kept == ["3", "4"]
    stubs = [r.location for r in parse_wiki(chunk, SPECIALS, min_chars=10) if isinstance(r, Skipped)]
    assert stubs == ["wiki_00:1", "wiki_00:2", "wiki_00:3"]
    assert len([r for r in parse_wiki(chunk, SPECIALS, min_chars=1) if isinstance(r, Document)]) == 4
    # an article whose text does not repeat the title counts all of its text
    other = line({"id": "9", "title": "标题", "text": "短短的正文，共十二个字符。"})
    assert isinstance(parse_wiki(Chunk("w", 1, other, "jsonl"), SPECIALS, min_chars=10)[0], Document)


def test_documents_end_with_endoftext_and_keep_the_text_as_given():
    a = article("7", "数学", "数学是一门学科，研究数量与结构。")
    [doc] = parse_wiki(Chunk("w", 1, line(a), "jsonl"), SPECIALS)
    assert [p.text for p in doc.pieces] == [a["text"], None]
    assert doc.pieces[1].special_id == SPECIALS.eot_id
    assert (doc.split_key, doc.dedup_key, doc.location) == ("7", a["text"], "w:1")


def test_to_simplified_converts_traditional_text(tmp_path, byte_tokenizer):
    write(tmp_path / "wiki_00", line(article("1", "數學", "數學是研究數量、結構以及空間等概念的學科。")))
    run(tmp_path / "wiki_00", tmp_path / "out", to_simplified=True)
    [doc] = decoded_docs(tmp_path / "out", byte_tokenizer)
    assert doc == "数学\n\n数学是研究数量、结构以及空间等概念的学科。\n" + EOT
    run(tmp_path / "wiki_00", tmp_path / "plain")
    assert decoded_docs(tmp_path / "plain", byte_tokenizer)[0].startswith("數學")


def test_text_is_nfc_normalised_and_duplicates_compare_after_nfc(tmp_path, byte_tokenizer):
    composed, decomposed = "Café 咖啡馆是一种常见的饮食场所。", "Cafe\u0301 咖啡馆是一种常见的饮食场所。"
    write(tmp_path / "wiki_00", line(article("1", "咖啡", decomposed)) + line(article("2", "咖啡", composed)))
    meta = run(tmp_path / "wiki_00", tmp_path / "out")
    assert meta["skipped"]["duplicate"]["examples"] == ["wiki_00:2"]
    assert decoded_docs(tmp_path / "out", byte_tokenizer) == [f"咖啡\n\n{composed}\n" + EOT]


def test_a_lone_surrogate_escape_is_skipped_not_fatal(tmp_path):
    bad = json.dumps({"id": "1", "title": "x", "text": "x\n\nabc \ud800 def ghi jkl"}).encode() + b"\n"
    good = line(article("2", "好", "一篇正常的文章，足够长。"))
    write(tmp_path / "wiki_00", bad + good)
    meta = run(tmp_path / "wiki_00", tmp_path / "out")
    assert meta["skipped"] == {"invalid_unicode": {"count": 1, "examples": ["wiki_00:1"]}}
    assert meta["records"] == {"read": 2, "kept": 1, "chars": len(article("2", "好", "一篇正常的文章，足够长。")["text"])}


@pytest.mark.parametrize("magic", [b"\x1f\x8b\x08\x00", b"BZh91AY&SY"])
def test_compressed_shards_are_skipped_as_a_whole(tmp_path, magic):
    write(tmp_path / "in/AA/wiki_00.bz2", magic + bytes(range(256)) * 4)
    write(tmp_path / "in/AA/wiki_01", line(article("1", "好", "一篇正常的文章，足够长。")))
    meta = run(tmp_path / "in", tmp_path / "out")
    assert meta["skipped"] == {"compressed_file": {"count": 1, "examples": ["AA/wiki_00.bz2"]}}


def test_repaired_records_are_not_skips():
    data = b"\xef\xbb\xbf" + line(article("1", "好", "一篇正常的文章，足够长。"))[:-1] + b"\r\n"
    recs = parse_wiki(Chunk("w", 1, data, "jsonl"), SPECIALS)
    assert [type(r) for r in recs] == [Repaired, Repaired, Document]


def test_chunks_cut_only_between_records_in_both_formats(tmp_path):
    arts = [article(str(i), f"条目{i}", f"第{i}篇文章的正文内容，" * (1 + i % 7)) for i in range(60)]
    we = "".join(f'<doc id="{a["id"]}" url="u" title="{a["title"]}">\n{a["text"]}</doc>\n' for a in arts)
    write(tmp_path / "in/AA/wiki_00", we.encode())
    write(tmp_path / "in/AB/wiki_00", b"".join(line({**a, "id": "j" + a["id"], "text": a["text"] + "。"})
                                               for a in arts))
    base = run(tmp_path / "in", tmp_path / "big", chunk_bytes=1 << 20)
    for size in (50, 333, 4096):  # smaller than one record, about one, several
        meta = run(tmp_path / "in", tmp_path / f"c{size}", chunk_bytes=size)
        assert meta == base
        assert (tmp_path / f"c{size}/train.bin").read_bytes() == (tmp_path / "big/train.bin").read_bytes()
    assert base["records"]["kept"] == 120 and base["skipped"] == {}
