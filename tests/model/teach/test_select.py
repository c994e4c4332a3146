"""``model select``: keeps the top share of documents by teacher minus reference score, deterministically,
never touching the source; the stored scores make another KEEP need no model."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from model.teach.cli import select as select_command
from model.teach.select import kept_docs, select
from model.teach.teacher import TeacherError
from prep.tokenfile import open_token_folder
from tests.model.teach.test_teach import folder_digest, write_folder


@pytest.fixture(scope="module")
def wiki(tmp_path_factory, qwen):
    return write_folder(tmp_path_factory.mktemp("sel") / "wiki", qwen, n_docs=12)


@pytest.fixture(scope="module")
def qwen3_ref(tmp_path_factory):
    from tests.model.teach.conftest import random_hf_teacher

    return random_hf_teacher(tmp_path_factory.mktemp("ref") / "qwen3", "qwen3")


def test_keep_half_deterministic_source_untouched(wiki, hf_teacher, qwen3_ref, tmp_path):
    before = folder_digest(wiki)
    result = CliRunner().invoke(select_command, ["--data", str(wiki), "--teacher", str(hf_teacher), "--ref",
                                                 str(qwen3_ref), "--keep", "0.5", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "top" in result.output and "bottom" in result.output and "median" in result.output
    assert folder_digest(wiki) == before
    source, out = open_token_folder(wiki), open_token_folder(tmp_path / "a")
    n = source.split("train").n_docs
    assert out.split("train").n_docs == round(n / 2)
    assert out.split("val").n_docs == source.split("val").n_docs  # val copied whole
    sel = out.meta["selection"]
    assert sel["keep"] == 0.5 and sel["kept_docs"]["train"] == round(n / 2)
    scores = out.doc_scores("train")
    assert scores.shape == (n, 2) and np.isfinite(scores).all()
    kept = kept_docs(np.asarray(scores), 0.5)
    assert all(np.array_equal(out.split("train").doc(i), source.split("train").doc(d)) for i, d in enumerate(kept))
    select(wiki, tmp_path / "b", 0.5, str(hf_teacher), str(qwen3_ref))
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")


def test_another_keep_reuses_the_scores(wiki, hf_teacher, qwen3_ref, tmp_path):
    _, scores = select(wiki, tmp_path / "a", 0.5, str(hf_teacher), str(qwen3_ref))
    meta, again = select(wiki, tmp_path / "c", 0.25, scores_from=tmp_path / "a")  # no model loaded
    assert np.array_equal(again["train"], scores["train"])
    assert meta["selection"]["kept_docs"]["train"] == round(0.25 * len(scores["train"]))
    with pytest.raises(TeacherError, match="not a selection of"):
        select(tmp_path / "a", tmp_path / "d", 0.5, scores_from=tmp_path / "a")


def test_ties_and_empty_documents_are_ordered():
    scores = np.array([[1.0, 0.0], [np.nan, np.nan], [2.0, 1.0], [3.0, 0.0]])
    assert kept_docs(scores, 0.5).tolist() == [0, 3]  # 3 first, then 0 ties 2 and comes first
    assert kept_docs(scores, 1.0).tolist() == [0, 1, 2, 3]
