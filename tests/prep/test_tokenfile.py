"""The token-file contract: what the writer puts on disk, what readers accept, and what they refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.outputs import OutputError, partial_path
from prep.tokenfile import (
    META_NAME,
    TokenFileError,
    TokenFolderWriter,
    open_token_folder,
)

IDENTITY = {"name": "bytes", "fingerprint": "x", "len": 259, "special_ids": {}, "vocab_size": 384}


def write_sample(out, kind="pretrain", docs=(([1, 2, 256], "train"), ([7, 256], "val"), ([3, 4, 5, 256], "train"))):
    with TokenFolderWriter(out, kind, IDENTITY, with_mask=kind == "sft", with_turns=kind == "sft") as w:
        for ids, split in docs:
            mask = [0] * (len(ids) - 2) + [1, 0] if kind == "sft" else None
            w.add(split, ids, mask=mask, turn_starts=[0] if kind == "sft" else (), n_bytes=len(ids) - 1,
                  target_bytes=1)
        return w.finish({"options": {"a": 1}})


def test_layout_and_roundtrip(tmp_path):
    out = tmp_path / "wiki"
    meta = write_sample(out)
    assert sorted(p.name for p in out.iterdir()) == [".zh-mini-llm.json", "meta.json", "train.bin", "train.idx",
                                                     "val.bin", "val.idx"]
    assert (out / "train.bin").read_bytes() == np.array([1, 2, 256, 3, 4, 5, 256], "<u4").tobytes()
    assert (out / "train.idx").read_bytes() == np.array([0, 3, 7], "<u8").tobytes()
    assert meta["splits"]["train"] == {"tokens": 7, "docs": 2, "bytes": 5}
    folder = open_token_folder(out)
    assert folder.kind == "pretrain" and folder.meta["options"] == {"a": 1}
    train = folder.split("train")
    assert train.n_docs == 2 and train.n_tokens == 7
    assert train.doc(1).tolist() == [3, 4, 5, 256]
    assert isinstance(train.tokens, np.memmap) and not train.tokens.flags.writeable
    assert train.mask is None and train.turn_starts is None
    assert not partial_path(out).exists()


def test_sft_mask_and_turns(tmp_path):
    out = tmp_path / "sft"
    meta = write_sample(out, kind="sft")
    split = open_token_folder(out).split("train")
    assert split.mask.tolist() == [0, 1, 0, 0, 0, 1, 0]
    assert split.turn_starts.tolist() == [0, 3]  # offsets are made absolute
    assert split.doc_mask(1).tolist() == [0, 0, 1, 0]
    assert meta["splits"]["train"]["target_tokens"] == 2


def test_folder_without_meta_is_refused(tmp_path):
    out = tmp_path / "wiki"
    write_sample(out)
    (out / META_NAME).unlink()
    with pytest.raises(TokenFileError, match="no meta.json, so the folder is incomplete"):
        open_token_folder(out)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(TokenFileError, match="no such token folder"):
        open_token_folder(tmp_path / "nope")


def test_truncated_bin_is_refused(tmp_path):
    out = tmp_path / "wiki"
    write_sample(out)
    data = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(data[:-4])
    with pytest.raises(TokenFileError, match="train.bin: 24 bytes, expected 7 x 4-byte entries"):
        open_token_folder(out).split("train")


def test_wrong_format_version_is_refused(tmp_path):
    out = tmp_path / "wiki"
    write_sample(out)
    meta = json.loads((out / META_NAME).read_text())
    meta["format_version"] = 99
    (out / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(TokenFileError, match="format_version 99"):
        open_token_folder(out)


def test_failure_midway_keeps_the_previous_folder(tmp_path):
    out = tmp_path / "wiki"
    write_sample(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError), TokenFolderWriter(out, "pretrain", IDENTITY) as w:
        w.add("train", [9, 9, 9])
        raise RuntimeError("interrupted")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not partial_path(out).exists()


def test_leftover_partial_folder_is_replaced(tmp_path):
    out = tmp_path / "wiki"
    partial_path(out).mkdir(parents=True)
    (partial_path(out) / "train.bin").write_bytes(b"junk")
    write_sample(out)
    assert open_token_folder(out).split("train").n_tokens == 7


def test_refuses_to_replace_a_folder_that_is_not_a_token_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a token folder made by this project"):
        write_sample(tmp_path)
    assert (tmp_path / "notes.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_refuses_a_token_folder_with_files_it_did_not_write(tmp_path):
    """`prep sft X/train.jsonl --out X` must not delete X/train.jsonl (nor a train.py beside it)."""
    out = tmp_path / "wiki"
    write_sample(out)
    (out / "train.jsonl").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputError, match=r"did not write \(train\.jsonl\)"):
        write_sample(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_refuses_a_token_folder_of_the_other_kind(tmp_path):
    out = tmp_path / "wiki"
    write_sample(out)
    with pytest.raises(OutputError, match="holds a tokens/pretrain folder, not a tokens/sft one"):
        write_sample(out, kind="sft")
    assert open_token_folder(out).kind == "pretrain"


def test_mask_must_match_the_folder_kind(tmp_path):
    with TokenFolderWriter(tmp_path / "x", "pretrain", IDENTITY) as w, pytest.raises(ValueError, match="mask"):
        w.add("train", [1, 2], mask=[0, 1])


def test_previous_folder_is_restored_after_a_kill_between_the_two_renames(tmp_path):
    from common.outputs import retired_path

    out = tmp_path / "wiki"
    write_sample(out)
    out.rename(retired_path(out))  # what a kill -9 right after finish()'s first rename leaves
    with TokenFolderWriter(out, "pretrain", IDENTITY):
        pass  # opened and abandoned: the previous folder is back, untouched
    assert open_token_folder(out).split("train").n_tokens == 7
