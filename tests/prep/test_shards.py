"""prep --shard I/N then prep merge: the unsharded folder byte for byte (synthetic corpora, never skipped)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prep.cli import cli
from prep.merge import merge_shards
from prep.near_dedup import NearDedupConfig
from prep.pref import run_pref
from prep.sft import run_sft
from prep.shard import ShardSource, ShardSpec, parse_shard
from prep.shard_read import ShardError, ShardFolder
from prep.sources import Chunk, SourceInput
from prep.text import run_text
from prep.tokenfile import open_token_folder
from prep.wiki import run_wiki
from tests.conftest import ROOT
from tests.prep.shard_checks import assert_merge_equals, run_shards
from tests.prep.text_data import chinese, jsonl_bytes
from tests.prep.wiki_data import corpus, line, write

QUIET = {"workers": 1, "show_progress": False, "tokenizer": "bytes"}


def wiki_corpus(root: Path) -> Path:
    """9 files of articles, with an exact duplicate across shards, one within a shard, a stub, a bad line."""
    arts = corpus(180)
    files = [arts[k::9] for k in range(9)]
    files[7].append(files[0][3])  # across shards
    files[8].append(files[8][0])  # within one
    files[4].append({"id": "9", "title": "短", "text": "短\n"})  # a stub
    for k, rows in enumerate(files):
        write(root / ("AA" if k < 5 else "AB") / f"wiki_{k:02d}", b"".join(map(line, rows)) + b"{broken\n" * (k == 2))
    return root


def test_wiki_shards_merge_to_the_unsharded_folder(tmp_path):
    src = wiki_corpus(tmp_path / "wiki")
    for meta in assert_merge_equals(run_wiki, src, tmp_path, val_fraction=0.2, **QUIET):
        assert meta["skipped"]["duplicate"]["count"] == 2
        assert meta["skipped"]["stub"]["count"] == meta["skipped"]["invalid_json"]["count"] == 1
        assert meta["splits"]["val"]["docs"] > 0


def test_sft_and_pref_shards_keep_masks_and_turns(tmp_path):
    for name, run, sample in (("sft", run_sft, "belle/multiturn_chat.json"), ("pref", run_pref, "pref/dpo_zh.jsonl")):
        rows = (ROOT / "sample_data" / sample).read_bytes().splitlines(keepends=True)
        src = tmp_path / f"{name}-in"
        for k in range(4):
            write(src / f"part{k}.jsonl", b"".join(rows[k::4]) + (rows[0] if k == 3 else b""))
        out = tmp_path / name
        meta = assert_merge_equals(run, src, out, ns=(3,), val_fraction=0.2, **QUIET)[0]
        assert meta["skipped"]["duplicate"]["count"] == 1
        folder = open_token_folder(out / "merged3")
        assert folder.split("train").mask is not None and folder.split("train").turn_starts is not None


def edit(text: str, positions: list[int]) -> str:
    chars = list(text)
    for k in positions:
        chars[k] = "改"
    return "".join(chars)


def test_near_duplicates_are_decided_in_input_order_across_shards(tmp_path):
    """A in shard 0; B ~ A and C ~ B (but not ~ A) in shard 2: shard 2 alone keeps B and drops C; the whole
    run drops B (a near-duplicate of A) and so keeps C. The merge must do the same."""
    rng = random.Random(3)
    a = chinese(rng, 150)
    b, c = edit(a, [20, 90]), edit(edit(a, [20, 90]), [50, 130])
    files = [[chinese(rng, 150) for _ in range(8)] for _ in range(6)]
    files[0].insert(2, a)
    files[4][3:3] = [b, c]
    files[3].append(files[1][5])  # an exact duplicate across shards
    for k, texts in enumerate(files):
        write(tmp_path / "in" / f"t{k}.jsonl", jsonl_bytes([{"text": t} for t in texts]))
    kw = {**QUIET, "val_fraction": 0.1, "near_dedup": NearDedupConfig(0.8)}
    meta = assert_merge_equals(run_text, tmp_path / "in", tmp_path, ns=(1, 3), **kw)[1]
    shard2 = ShardFolder(tmp_path / "shards3" / "shard-2")
    assert shard2.record["held_docs"] == 1  # C, dropped by its shard
    ids = np.concatenate([np.fromfile(tmp_path / "merged3" / f"{s}.bin", "<u4") for s in ("train", "val")])
    kept = bytes(ids[ids < 256].astype(np.uint8))  # the bytes tokenizer: ids 0-255 are the bytes
    assert c.encode() in kept and b.encode() not in kept
    assert meta["skipped"]["near_duplicate"]["count"] == 1 and meta["skipped"]["duplicate"]["count"] == 1


def test_missing_repeated_and_foreign_shards_are_one_line(tmp_path):
    src = wiki_corpus(tmp_path / "wiki")
    shards = run_shards(run_wiki, src, tmp_path / "s", 3, val_fraction=0.2, **QUIET)
    run_wiki(src, tmp_path / "other-options", shard=ShardSpec(1, 3), val_fraction=0.3, **QUIET)
    run_wiki(src, tmp_path / "other-tok", shard=ShardSpec(1, 3), val_fraction=0.2,
             **{**QUIET, "tokenizer": "qwen2"})
    run_wiki(src / "AA", tmp_path / "other-input", shard=ShardSpec(1, 3), val_fraction=0.2, **QUIET)
    s0, s1, s2 = (str(shards / f"shard-{i}") for i in range(3))
    cases = {
        "missing shard 1/3": [s0, s2],
        "given twice": [s0, s1, s1, s2],
        "option val_fraction": [s0, str(tmp_path / "other-options"), s2],
        "made with tokenizer": [s0, str(tmp_path / "other-tok"), s2],
        "other inputs": [s0, str(tmp_path / "other-input"), s2],
        "shard 1/2, not of 3": [s0, s1, s2, str(run_shards(run_wiki, src, tmp_path / "two", 2, **QUIET) / "shard-1")],
    }
    for expected, args in cases.items():
        result = CliRunner().invoke(cli, ["merge", *args, "--out", str(tmp_path / "m")])
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and expected in result.output, result.output
    assert not (tmp_path / "m").exists()
    result = CliRunner().invoke(cli, ["merge", str(shards), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0 and "wrote" in result.output


def test_an_empty_shard_is_valid_and_a_merge_of_nothing_is_one_line(tmp_path):
    write(tmp_path / "in" / "one.jsonl", jsonl_bytes([{"text": "只有一篇文章，写在一个文件里。"}]))
    shards = run_shards(run_text, tmp_path / "in", tmp_path / "s", 3, **QUIET)
    assert sum(ShardFolder(shards / f"shard-{i}").record["docs"] for i in range(3)) == 1
    merge_shards([shards], tmp_path / "m")
    write(tmp_path / "stubs" / "one.jsonl", jsonl_bytes([{"text": "短"}]))
    stubs = run_shards(run_text, tmp_path / "stubs", tmp_path / "s2", 2, **QUIET)
    with pytest.raises(Exception, match="no usable document; 1 records read; skipped: too_short 1"):
        merge_shards([stubs], tmp_path / "m2")


class FakeSource:
    """Inputs of the given sizes, each one chunk per `step` bytes (as a source cuts them)."""

    def __init__(self, sizes: list[int], step: int = 10):
        self.step = step
        self.files = [(Path(f"f{k}"), f"f{k}") for k in range(len(sizes))]
        self.inputs = [SourceInput(f"f{k}", n) for k, n in enumerate(sizes)]
        self.opened: list[str] = []

    def chunks(self):
        for (_, name), info in zip(self.files, self.inputs, strict=True):
            self.opened.append(name)
            for at in range(0, max(info.n_bytes, 1), self.step):
                yield Chunk(name, at, b"", n_bytes=min(self.step, info.n_bytes - at))


def partition(sizes: list[int], n: int) -> tuple[list[list[tuple[str, int]]], list[list[str]]]:
    """Per shard: the (input, first line) of its chunks, and the inputs it opened."""
    got, opened = [], []
    for i in range(n):
        fake = FakeSource(sizes)
        got.append([(c.name, c.first_line) for c in ShardSource(fake, ShardSpec(i, n)).chunks()])
        opened.append(fake.opened)
    return got, opened


def test_shard_option_and_partition():
    assert parse_shard("2/8") == ShardSpec(2, 8) and str(ShardSpec(2, 8)) == "2/8"
    for bad in ("8/8", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(Exception, match="--shard"):
            parse_shard(bad)
    got, opened = partition([10] * 6, 3)
    assert opened == [["f0", "f1"], ["f2", "f3"], ["f4", "f5"]]  # whole files, each opened by one shard
    got, opened = partition([300], 3)  # one file: byte ranges of it, each shard reading up to its part's end
    assert [len(g) for g in got] == [10, 10, 10] and opened == [["f0"]] * 3
    assert partition([0, 0, 0, 0], 4)[1] == [["f0"], ["f1"], ["f2"], ["f3"]]  # no bytes at all: by input
    for sizes in ([300], [5, 0, 280, 15], [0, 0], [0] * 5, [int(x) for x in np.random.default_rng(0).integers(0, 100, 20)]):
        for n in (1, 3, 8):
            everything = [c for c in FakeSource(list(sizes)).chunks()]
            got, _ = partition(list(sizes), n)
            assert [c for g in got for c in g] == [(c.name, c.first_line) for c in everything]  # in order, once


def test_a_hub_dataset_cannot_be_sharded_and_the_cli_takes_the_option(tmp_path):
    result = CliRunner().invoke(cli, ["text", "owner/name", "--shard", "0/2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "cannot be sharded" in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(cli, ["wiki", str(tmp_path), "--shard", "3/3"])
    assert result.exit_code == 2 and "I must be in 0..N-1" in result.output
    with pytest.raises(ShardError, match="not a shard"):
        ShardFolder(run_text_plain(tmp_path))


def run_text_plain(tmp_path: Path) -> Path:
    write(tmp_path / "p" / "a.jsonl", jsonl_bytes([{"text": "一篇普通的文章，没有分片。"}]))
    run_text(tmp_path / "p", tmp_path / "plain", **QUIET)
    return tmp_path / "plain"


def test_shard_records_every_document_in_input_order(tmp_path):
    src = wiki_corpus(tmp_path / "wiki")
    shard = ShardFolder(run_shards(run_wiki, src, tmp_path / "s", 1, **QUIET) / "shard-0")
    meta = json.loads((shard.path / "meta.json").read_text())
    assert meta["options"]["shard"] == "0/1" and shard.record["docs"] == meta["records"]["kept"] + 2  # + the duplicates
    assert shard.location(0) == "AA/wiki_00:1"
    counts = shard.id_counts[0] + shard.id_counts[1]
    assert counts.sum() == sum(s["tokens"] for s in meta["splits"].values())


def test_a_manifest_lets_training_read_the_shards_in_place(tmp_path):
    from train.mixture import MixtureError, open_mixture

    src = wiki_corpus(tmp_path / "wiki")
    shards = run_shards(run_wiki, src, tmp_path / "data" / "shards", 3, val_fraction=0.2, **QUIET)
    result = CliRunner().invoke(cli, ["merge", str(shards), "--manifest", str(tmp_path / "data" / "wiki.json")])
    assert result.exit_code == 0 and "1 documents" in result.output, result.output
    record = json.loads((tmp_path / "data" / "wiki.json").read_text())
    assert [f["path"] for f in record["folders"]] == [f"shards/shard-{i}" for i in range(3)]
    mixture = open_mixture(str(tmp_path / "data" / "wiki.json"))
    tokens = [open_token_folder(shards / f"shard-{i}").meta["splits"]["train"]["tokens"] for i in range(3)]
    assert mixture.weights == pytest.approx([t / sum(tokens) for t in tokens])
    assert mixture.label == str(tmp_path / "data" / "wiki")
    (tmp_path / "not.json").write_text("{}")
    with pytest.raises(MixtureError, match="not a shard manifest"):
        open_mixture(str(tmp_path / "not.json"))
    result = CliRunner().invoke(cli, ["merge", str(shards)])
    assert result.exit_code == 2 and "--out DIR" in result.output


def test_make_merge_takes_paths_verbatim(tmp_path):
    import os
    import subprocess

    stamp, project = ROOT / ".venv" / ".installed", ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < project.stat().st_mtime:
        pytest.skip("the Makefile's .venv is not built and current (make setup); this test must not build it")
    src = wiki_corpus(tmp_path / "wiki")
    shards = run_shards(run_wiki, src, tmp_path / "shards $HOME `x`", 2, **QUIET)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MK_")}
    out = tmp_path / "merged 'q'"
    r = subprocess.run(["make", "--no-print-directory", "-s", "-C", str(ROOT), "merge", f"SHARDS={shards}",
                        f"OUT={out}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "meta.json").is_file()


def test_a_failed_shard_leaves_the_earlier_one_and_no_partial_folder(tmp_path):
    import functools

    from common.outputs import partial_path
    from prep.pipeline import PrepJob, run_prep
    from prep.wiki import wiki_source
    from tests.prep.wiki_data import failing_parse

    def folder_bytes(folder: Path) -> dict:
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    src = wiki_corpus(tmp_path / "wiki")
    out = run_shards(run_wiki, src, tmp_path / "s", 1, **QUIET) / "shard-0"
    before = folder_bytes(out)
    job = PrepJob(wiki_source(src, chunk_bytes=1024), functools.partial(failing_parse, fail_at=5), out, "pretrain",
                  {}, tokenizer="bytes", workers=1, show_progress=False, shard=ShardSpec(0, 1))
    with pytest.raises(RuntimeError, match="boom"):
        run_prep(job)
    assert folder_bytes(out) == before and not partial_path(out).exists()
    ShardFolder(out)  # still a complete shard
    record = json.loads((out / "shard" / "shard.json").read_text())
    (out / "shard" / "shard.json").write_text(json.dumps({**record, "count": "3"}))
    with pytest.raises(ShardError, match="not a shard record"):
        ShardFolder(out)


def test_one_big_file_is_shared_by_byte_ranges(tmp_path):
    """One wiki file, one JSON array, one gzip'd JSON-lines file, one Parquet file, one SFT file: each read by
    several shards, each shard taking the chunks of its byte range."""
    from tests.prep.text_data import write_rows

    arts = corpus(240)
    arts.append(arts[7])  # a duplicate, in a later shard
    write(tmp_path / "wiki" / "AA" / "wiki_00", b"".join(map(line, arts)) + b"{cut off")
    kw = {"val_fraction": 0.2, **QUIET, "chunk_bytes": 4096}
    meta = assert_merge_equals(run_wiki, tmp_path / "wiki", tmp_path / "w", **kw)[2]
    assert meta["skipped"]["duplicate"]["count"] == 1 and meta["skipped"]["truncated_last_line"]["count"] == 1
    assert all(ShardFolder(tmp_path / "w" / "shards8" / f"shard-{i}").record["docs"] for i in range(8))

    rows = [{"text": f"第{i}篇：" + a["text"]} for i, a in enumerate(arts)]
    for name, how in (("a.json", None), ("b.jsonl", "gz"), ("c.parquet", None)):
        write_rows(tmp_path / "text" / name, rows[: 120 if name != "a.json" else 240], how)
    assert_merge_equals(run_text, tmp_path / "text", tmp_path / "t", ns=(3, 8), **kw)

    belle = (ROOT / "sample_data" / "belle" / "multiturn_chat.json").read_bytes()
    write(tmp_path / "sft" / "one.jsonl", belle + belle.splitlines(keepends=True)[0])
    assert_merge_equals(run_sft, tmp_path / "sft", tmp_path / "s", ns=(3,), **{**kw, "chunk_bytes": 1024})
