"""prep text: every input format and compression, folders, fields, datasets, bad input counted by reason."""

from __future__ import annotations

import gzip
import json

import pytest

from prep.records import PrepError
from prep.row_sources import parse_hub_spec
from prep.wiki import DEFAULT_MIN_CHARS
from tests.prep.text_data import compress, docs, jsonl_bytes, prep, skipped, texts, write, write_rows

TEXTS = texts(7)
ROWS = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]


FORMATS = [(name, how) for name in ("d.jsonl", "d.json", "d.txt") for how in (None, "gz", "zst")]


@pytest.mark.parametrize(("name", "how"), [*FORMATS, ("d.parquet", None)])  # Parquet compresses inside the file
def test_every_format_and_compression_gives_the_same_documents(tmp_path, byte_tokenizer, name, how):
    if name == "d.txt":
        path = write(tmp_path / (f"in/{name}" + {"gz": ".gz", "zst": ".zst"}.get(how or "", "")),
                     compress("\n\n".join(TEXTS).encode() + b"\n", how))
        meta = prep(path, tmp_path / "out", txt_docs="blocks")
    else:
        path = write_rows(tmp_path / f"in/{name}", ROWS, how)
        meta = prep(path, tmp_path / "out")
    assert docs(tmp_path / "out", byte_tokenizer) == TEXTS
    assert meta["skipped"] == {} and meta["records"]["kept"] == 7
    assert meta["sources"] == [{"path": path.name, "bytes": path.stat().st_size, "records_read": 7,
                                "records_kept": 7}]


def test_plain_text_one_document_per_file_or_per_block(tmp_path, byte_tokenizer):
    write(tmp_path / "in/a.txt", "\ufeff第一段第一行，足够长。\r\n第一段第二行\r\n  \r\n\r\n第二段，也足够长的文字。\r\n".encode())
    write(tmp_path / "in/sub/b.txt", "第三段：另一个文件的文字。\n\n\n\n短\n第四段在短行之后。".encode())
    write(tmp_path / "in/.hidden/c.txt", "隐藏的文件不读。".encode())
    prep(tmp_path / "in", tmp_path / "files")
    assert docs(tmp_path / "files", byte_tokenizer) == [
        "第一段第一行，足够长。\n第一段第二行\n  \n\n第二段，也足够长的文字。", "第三段：另一个文件的文字。\n\n\n\n短\n第四段在短行之后。"]
    for chunk_bytes in (None, 16):  # cut at every blank line, or never
        meta = prep(tmp_path / "in", tmp_path / "blocks", txt_docs="blocks", chunk_bytes=chunk_bytes)
        assert docs(tmp_path / "blocks", byte_tokenizer) == [
            "第一段第一行，足够长。\n第一段第二行", "第二段，也足够长的文字。", "第三段：另一个文件的文字。", "短\n第四段在短行之后。"]
        assert meta["skipped"] == {}
    write(tmp_path / "in/sub/b.txt", b"\xff\xfe not UTF-8 at all, long enough\n\nok block, long enough\n")
    meta = prep(tmp_path / "in", tmp_path / "bad", txt_docs="blocks")
    assert skipped(meta) == {"invalid_utf8": (1, ["sub/b.txt:1"])}


def test_dotted_and_several_fields_and_the_id_field(tmp_path, byte_tokenizer):
    rows = [
        {"meta": {"title": "标题一", "id": "a"}, "body": {"text": "第一篇正文，足够长。"}},  # 1
        {"meta": {"title": "", "id": "b"}, "body": {"text": "没有标题的第二篇正文。"}},      # 2 empty title left out
        {"meta": {"title": "标题三", "id": 3}, "body": {}},                              # 3 missing_field
        {"meta": {"title": ["x"], "id": "d"}, "body": {"text": "标题不是字符串的一篇。"}},   # 4 non_string_field
        {"meta": {"title": "标题五"}, "body": {"text": "没有编号的第五篇正文。"}},          # 5 missing id
        {"meta.title": "点在键名里", "meta": {"id": "f"}, "body": {"text": "键名本身带点的一篇。"}},  # 6
        "a string, not an object",                                                     # 7
    ]
    src = write_rows(tmp_path / "d.jsonl", rows)
    meta = prep(src, tmp_path / "out", fields=("meta.title", "body.text"), id_field="meta.id")
    assert docs(tmp_path / "out", byte_tokenizer) == [
        "标题一\n第一篇正文，足够长。", "没有标题的第二篇正文。", "点在键名里\n键名本身带点的一篇。"]
    assert skipped(meta) == {"missing_field": (2, ["d.jsonl:3", "d.jsonl:5"]),
                             "non_string_field": (1, ["d.jsonl:4"]), "not_an_object": (1, ["d.jsonl:7"])}
    assert meta["options"]["fields"] == ["meta.title", "body.text"] and meta["options"]["id_field"] == "meta.id"


def test_the_split_follows_the_id_field_not_the_text(tmp_path, byte_tokenizer):
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts(200))]
    edited = [{"id": r["id"], "text": r["text"] + "（修订）"} for r in rows]

    def val_docs(rows: list[dict], name: str, **kw) -> set[str]:
        prep(write_rows(tmp_path / f"{name}.jsonl", rows), tmp_path / name, val_fraction=0.2, **kw)
        return {d.split("。")[0] for d in docs(tmp_path / name, byte_tokenizer, "val")}  # "第12篇"

    by_id = val_docs(rows, "a", id_field="id")
    assert 10 < len(by_id) < 70
    assert val_docs(edited, "b", id_field="id") == by_id  # an edit never moves a document with an id
    assert val_docs(edited, "c") != by_id  # without one, the text is hashed: another draw


def test_folders_globs_and_sniffed_formats(tmp_path, byte_tokenizer):
    a, b, c, d = texts(4, seed=3)
    write_rows(tmp_path / "in/x/1.parquet", [{"text": a}])
    write_rows(tmp_path / "in/x/2.json", [{"text": b}])
    write(tmp_path / "in/y/part-0000", jsonl_bytes([{"text": c}]))  # no suffix: sniffed as JSON lines
    write(tmp_path / "in/y/notes", d.encode())                      # no suffix: sniffed as plain text
    write(tmp_path / "in/y/ignored.csv", b"text\nnot read\n")
    prep(tmp_path / "in", tmp_path / "all")
    assert docs(tmp_path / "all", byte_tokenizer) == [a, b]
    meta = prep(tmp_path / "in", tmp_path / "some", patterns=("part-*", "notes", "*.json"))
    assert [s["path"] for s in meta["sources"]] == ["x/2.json", "y/notes", "y/part-0000"]
    assert docs(tmp_path / "some", byte_tokenizer) == [b, d, c]


def test_bad_input_is_counted_by_reason_and_location(tmp_path, byte_tokenizer):
    good = texts(6, seed=9)
    lines = jsonl_bytes([{"text": good[0]}]) + b"not json\n" + jsonl_bytes([{"text": good[1]}, {"text": "短"}])
    write(tmp_path / "in/a.jsonl", lines)
    cut = gzip.compress(jsonl_bytes([{"text": t} for t in good[2:5]] + [{"text": good[4]}] * 4000), mtime=0)
    write(tmp_path / "in/b.jsonl.gz", cut[: len(cut) * 2 // 3])  # a download cut off: its start is used
    write(tmp_path / "in/c.jsonl.bz2", b"BZh91AY&SY" + bytes(100))
    write(tmp_path / "in/d.parquet", b"PAR1 this is not really parquet")
    write(tmp_path / "in/e.jsonl", b"")
    write(tmp_path / "in/f.jsonl.zst", b"\x28\xb5\x2f\xfd garbage")
    write(tmp_path / "in/g.parquet.gz", gzip.compress(b"PAR1"))
    meta = prep(tmp_path / "in", tmp_path / "out", patterns=("*.jsonl*", "*.parquet*"), chunk_bytes=4096)
    got = skipped(meta)
    count, where = got.pop("corrupt_compressed_file")  # the cut file: where its damage begins
    assert count == 2 and where[0].startswith("b.jsonl.gz:") and where[1] == "f.jsonl.zst"
    assert got.pop("duplicate")[0] > 0 and got.pop("truncated_last_line", (1, []))[0] <= 1
    assert got == {"invalid_json": (1, ["a.jsonl:2"]), "too_short": (1, ["a.jsonl:4"]),
                   "compressed_file": (2, ["c.jsonl.bz2", "g.parquet.gz"]), "invalid_parquet": (1, ["d.parquet"]),
                   "empty_file": (1, ["e.jsonl"])}
    assert docs(tmp_path / "out", byte_tokenizer) == good[:5]


def test_to_simplified_and_min_chars(tmp_path, byte_tokenizer):
    src = write_rows(tmp_path / "d.jsonl", [{"text": "  數學是研究數量、結構以及空間的學科。\n"}, {"text": "一二三四五六七八九"}])
    meta = prep(src, tmp_path / "out", to_simplified=True)
    assert docs(tmp_path / "out", byte_tokenizer) == ["数学是研究数量、结构以及空间的学科。"]
    assert skipped(meta) == {"too_short": (1, ["d.jsonl:2"])} and DEFAULT_MIN_CHARS == 10
    prep(src, tmp_path / "all", min_chars=0)
    assert docs(tmp_path / "all", byte_tokenizer)[1] == "一二三四五六七八九"


def test_hub_spec_names_config_and_split():
    assert parse_hub_spec("opencsg/chinese-fineweb-edu") == ("opencsg/chinese-fineweb-edu", None, "train")
    assert parse_hub_spec("BAAI/CCI3-Data:zh@validation") == ("BAAI/CCI3-Data", "zh", "validation")
    assert parse_hub_spec("owner/name@test") == ("owner/name", None, "test")
    assert parse_hub_spec("/data/a:b@c/folder:cfg") == ("/data/a:b@c/folder", "cfg", "train")


def test_a_dataset_through_datasets_offline_with_config_and_split(tmp_path, monkeypatch, byte_tokenizer):
    """What a hub name goes through, run offline on a local clone of a dataset repository (README configs)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    write(repo / "README.md", b"---\nconfigs:\n- config_name: zh\n  data_files:\n  - split: train\n"
          b"    path: zh/train.jsonl\n  - split: test\n    path: zh/test.jsonl\n- config_name: en\n"
          b"  data_files: en/*.jsonl\n---\n")
    a, b, c = texts(3, seed=4)
    write(repo / "zh/train.jsonl", jsonl_bytes([{"text": a, "content": {"body": "训练集的正文。"}, "score": 3.5}]))
    write(repo / "zh/test.jsonl", jsonl_bytes([{"text": "未选的列", "content": {"body": b}, "score": 1.0}]))
    write(repo / "en/0.jsonl", jsonl_bytes([{"text": c}]))
    meta = prep(f"{repo}:zh@test", tmp_path / "out", hub=True, fields=("content.body",))
    assert docs(tmp_path / "out", byte_tokenizer) == [b]
    assert meta["sources"][0]["path"] == f"{repo}:zh@test" and meta["options"]["hub"] is True
    prep(f"{repo}:zh", tmp_path / "train", hub=True)
    assert docs(tmp_path / "train", byte_tokenizer) == [a]


def test_a_hub_name_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PrepError) as e:
        prep("opencsg/chinese-fineweb-edu:zh@train", tmp_path / "out")
    message = str(e.value)
    assert message.startswith("opencsg/chinese-fineweb-edu:zh: cannot load this dataset") and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_a_damaged_file_in_any_format_loses_only_its_rest(tmp_path, byte_tokenizer):
    """A cut-off JSON array, JSON with a bad element, a cut .zst (once read as a shorter or empty file) and
    a cut .gz: each gives its rows up to the damage, the rest is counted once at file:line, and the
    good file beside them is read; the run goes on."""
    rows = [{"text": t} for t in TEXTS[:4]]
    array = json.dumps(rows, indent=1).encode()
    write(tmp_path / "in/a.json", array[:-10])  # cut inside the last element
    write(tmp_path / "in/b.json", b'[{"text": "' + TEXTS[4].encode() + b'"},\n {"text": }]')  # bad JSON, line 2
    zst = compress(jsonl_bytes([{"text": TEXTS[5]}] + [{"text": f"{i} " + TEXTS[6]} for i in range(3000)]), "zst")
    write(tmp_path / "in/c.jsonl.zst", zst[: len(zst) // 2])
    write(tmp_path / "in/d.txt.zst", compress(TEXTS[6].encode(), "zst")[:-4])  # cut inside its only frame
    write(tmp_path / "in/e.jsonl", jsonl_bytes([{"text": "好" * 20}]))
    meta = prep(tmp_path / "in", tmp_path / "out", chunk_bytes=4096)
    got = skipped(meta)
    invalid = got.pop("invalid_json")
    assert invalid[0] == 2 and invalid[1][0].startswith("a.json:") and invalid[1][1] == "b.json:2"
    count, where = got.pop("corrupt_compressed_file")
    assert count == 2 and where[0].startswith("c.jsonl.zst:") and where[1] == "d.txt.zst"
    assert "empty_file" not in got
    kept = docs(tmp_path / "out", byte_tokenizer)
    assert kept[:4] == TEXTS[:3] + [TEXTS[4]] and kept[4] == TEXTS[5] and kept[-1] == "好" * 20


def test_compression_bombs_and_endless_lines_stay_in_bounded_memory(tmp_path, byte_tokenizer, monkeypatch):
    """A small .txt.gz, .zst or .json.gz that expands far past the record cap is read past, counted as
    too_large at its line, and never held whole; records after an endless line are still read."""
    from prep import long_pieces, row_sources, sources, text_sources

    cap = 1 << 20
    for module in (sources, text_sources, row_sources):
        monkeypatch.setattr(module, "MAX_RECORD_BYTES", cap)
    monkeypatch.setattr(long_pieces, "LONG_PIECE", 5000)  # a word encoded by the long-piece BPE, and kept
    write(tmp_path / "in/e.jsonl", jsonl_bytes([{"text": "很长" + "z" * 6000}, {"text": TEXTS[3]}]))
    endless = b"x" * (8 * cap)
    write(tmp_path / "in/a.txt.gz", gzip.compress(endless, mtime=0))
    write(tmp_path / "in/b.jsonl.zst", compress(jsonl_bytes([{"text": TEXTS[0]}]) + b'{"text": "' + endless
                                                + b'"}\n' + jsonl_bytes([{"text": TEXTS[1]}]), "zst"))
    write(tmp_path / "in/c.json.gz", gzip.compress(b'[{"text": "' + TEXTS[2].encode() + b'"}, "' + endless + b'"]'))
    write(tmp_path / "in/d.jsonl.gz", gzip.compress(endless, mtime=0))  # one line, no newline at all
    import pyarrow as pa
    import pyarrow.parquet as pq  # a row group of one row holding 8 MB, compressed to a few hundred bytes

    pq.write_table(pa.table({"text": [TEXTS[4], endless.decode()]}), tmp_path / "in/f.parquet", compression="zstd",
                   row_group_size=1)
    assert sum(p.stat().st_size for p in (tmp_path / "in").iterdir()) < 200_000
    held = []
    real = sources.Chunk.__init__

    def record(self, *args, **kw):
        real(self, *args, **kw)
        held.append(len(self.data))

    monkeypatch.setattr(sources.Chunk, "__init__", record)
    meta = prep(tmp_path / "in", tmp_path / "out", chunk_bytes=64 << 10)
    assert max(held) <= 2 * cap  # no chunk ever held the 8 MB records
    assert skipped(meta)["too_large"] == (5, ["a.txt.gz:1", "b.jsonl.zst:2", "c.json.gz:1", "d.jsonl.gz:1",
                                              "f.parquet:2"])
    assert "too_long_word" not in meta["skipped"]
    assert docs(tmp_path / "out", byte_tokenizer) == [*TEXTS[:3], "很长" + "z" * 6000, *TEXTS[3:5]]


