"""``model teach``: a teacher's sparse targets beside the tokens, for Qwen2's vocabulary and a cut of it;
teachers of another vocabulary refused; a capture killed midway completes on rerun, identically."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from click.testing import CliRunner

from model.io import save_model
from model.teach import capture
from model.teach.capture import TeachOptions, teach
from model.teach.cli import teach as teach_command
from model.teach.teacher import TeacherError
from prep.remap import remap_folder
from prep.tokenfile import TokenFolderWriter, open_token_folder
from prep.tokenizer import load_tokenizer
from prep.vocab_build import build_vocab
from tests.model.conftest import tiny_model
from tests.train.conftest import texts

OPTS = TeachOptions(k=6, chunk_tokens=64)


def write_folder(path, tok, kind="pretrain", n_docs=6):
    """A few short documents (SFT: a mask training their second half)."""
    with TokenFolderWriter(path, kind, tok.identity(), with_mask=kind == "sft") as w:
        for i, text in enumerate(texts(n_docs, seed=3)):
            ids = tok.encode(text[:30]) + [tok.eot_id]
            mask = [0] * (len(ids) // 2) + [1] * (len(ids) - len(ids) // 2) if kind == "sft" else None
            w.add("val" if i == 0 else "train", ids, mask, n_bytes=len(text[:30].encode()),
                  target_bytes=len(text[:30].encode()) if kind == "sft" else 0)
        w.finish()
    return path


def folder_digest(path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.is_file())).hexdigest()


@pytest.fixture(scope="module")
def qwen_data(tmp_path_factory, qwen):
    return write_folder(tmp_path_factory.mktemp("data") / "wiki", qwen)


def check_targets(out, n_ids: int, k: int) -> dict:
    folder = open_token_folder(out)
    assert folder.teach_k == k
    for name in ("train", "val"):
        split = folder.split(name)
        assert split.teach_ids.shape == (split.n_tokens, k)
        assert int(split.teach_ids.max()) < n_ids
        sums = split.teach_counts.astype(int).sum(1)
        trained = np.ones(split.n_tokens, bool) if split.mask is None else split.mask.astype(bool)
        assert (sums[trained] == k).all() and (sums[~trained] == 0).all()
    return folder.meta


def test_full_vocabulary_targets(qwen_data, hf_teacher, tmp_path, qwen):
    before = folder_digest(qwen_data)
    meta = teach(qwen_data, str(hf_teacher), tmp_path / "t", OPTS)
    assert folder_digest(qwen_data) == before  # the source is never changed
    check_targets(tmp_path / "t", len(qwen), OPTS.k)
    t = meta["teacher"]
    assert t["vocabulary"] == "qwen2" and t["k"] == 6 and t["bytes_per_token"] == 30
    assert t["dropped_mass_per_token"] == 0.0
    src, out = open_token_folder(qwen_data).split("train"), open_token_folder(tmp_path / "t").split("train")
    assert np.array_equal(src.tokens, out.tokens) and np.array_equal(src.doc_starts, out.doc_starts)


def test_cut_vocabulary_targets_are_folded_into_it(qwen_data, hf_teacher, tmp_path):
    vocab = tmp_path / "vocab"
    build_vocab([qwen_data], vocab, 400)
    remap_folder(qwen_data, str(vocab), tmp_path / "cut")
    cut = load_tokenizer(str(vocab))
    meta = teach(tmp_path / "cut", str(hf_teacher), tmp_path / "t", OPTS)
    check_targets(tmp_path / "t", len(cut), OPTS.k)
    # a random teacher spreads its mass over all of Qwen2's ids: nearly all of it is on ids the cut dropped
    assert meta["teacher"]["dropped_mass_per_token"] > 0.9


def test_fold_goes_to_the_first_kept_piece(qwen_data, tmp_path, qwen):
    from model.teach.vocab_map import cut_map

    vocab = tmp_path / "vocab"
    record = build_vocab([qwen_data], vocab, 400)
    cut = load_tokenizer(str(vocab))
    m = cut_map(qwen, cut, record["kept_ids"])
    dropped = int(np.flatnonzero(m.dropped)[1000])
    pieces = cut.encoding._encode_bytes(qwen.token_bytes(dropped))
    assert len(pieces) > 1 and m.fold[dropped] == pieces[0]
    kept = record["kept_ids"][300]
    assert m.fold[kept] == 300 and m.to_teacher[300] == kept and not m.dropped[kept]


def test_sft_targets_only_where_the_mask_trains(qwen, hf_teacher, tmp_path):
    data = write_folder(tmp_path / "sft", qwen, kind="sft")
    teach(data, str(hf_teacher), tmp_path / "t", OPTS)
    check_targets(tmp_path / "t", len(qwen), OPTS.k)


def test_a_teacher_of_another_vocabulary_is_one_line(qwen_data, tmp_path, byte_tokenizer):
    run = tmp_path / "bytes_run"
    save_model(run, tiny_model(), byte_tokenizer.identity(), "pretrain", 1)
    result = CliRunner().invoke(teach_command, ["--data", str(qwen_data), "--teacher", str(run), "--out",
                                                str(tmp_path / "t")])
    assert result.exit_code == 1 and "not Qwen2's" in result.output and "Traceback" not in result.output
    with pytest.raises(TeacherError, match="no such model folder"):
        teach(qwen_data, str(tmp_path / "missing"), tmp_path / "t", OPTS)
    assert not (tmp_path / "t").exists()


def test_a_capture_killed_midway_completes_on_rerun(qwen_data, hf_teacher, tmp_path, monkeypatch):
    whole = teach(qwen_data, str(hf_teacher), tmp_path / "whole", OPTS)
    real_save, saved = capture.ChunkStore.save, []

    def save_then_die(self, name, **arrays):
        if len(saved) == 2:
            raise KeyboardInterrupt  # as Ctrl-C (or kill -9) between two chunks
        saved.append(name)
        real_save(self, name, **arrays)

    monkeypatch.setattr(capture.ChunkStore, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        teach(qwen_data, str(hf_teacher), tmp_path / "t", OPTS)
    assert not (tmp_path / "t").exists()  # nothing half-written looks finished
    monkeypatch.setattr(capture.ChunkStore, "save", real_save)
    redone = []
    monkeypatch.setattr(capture.ChunkStore, "save", lambda self, name, **a: (redone.append(name),
                                                                             real_save(self, name, **a)))
    again = teach(qwen_data, str(hf_teacher), tmp_path / "t", OPTS)
    assert not set(redone) & set(saved)  # the finished chunks were not computed again
    assert again["teacher"] == whole["teacher"]
    for name in ("train", "val"):
        a, b = open_token_folder(tmp_path / "whole").split(name), open_token_folder(tmp_path / "t").split(name)
        assert np.array_equal(a.teach_ids, b.teach_ids) and np.array_equal(a.teach_counts, b.teach_counts)
    assert not any(p.name.endswith("teach-work") for p in tmp_path.iterdir())
