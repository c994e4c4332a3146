"""A damaged ``reference_logps.npz`` is one line saying what to do, whatever the damage: the file is
checked in full on read (format, names, shapes against the pairs, finite log-probs, the data and the model
it was computed from), and nothing in it is unpickled."""

from __future__ import annotations

import io

import numpy as np
import pytest

from train.pref_reference import ReferenceError, read, save

PAIRS = {"val": 3, "train": 5}
GOOD = {"val": -np.ones((3, 2), np.float32), "train": -np.ones((5, 2), np.float32)}


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def good_bytes(tmp_path) -> bytes:
    save(tmp_path / "good.npz", GOOD, "data-sha", "model-sha")
    return (tmp_path / "good.npz").read_bytes()


def test_a_good_file_reads_back(tmp_path):
    save(tmp_path / "r.npz", GOOD, "data-sha", "model-sha")
    parts = read(tmp_path / "r.npz", "data-sha", "model-sha", PAIRS)
    assert set(parts) == {"val", "train"} and np.array_equal(parts["train"], GOOD["train"])
    assert set(read(tmp_path / "r.npz", "data-sha", "", PAIRS)) == {"val", "train"}  # a run without a digest


DAMAGE = {
    "cut_in_half": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "garbage": lambda good: b"cut short by kill -9",
    "npy": lambda good: (lambda b: (np.save(b, np.zeros((3, 2))), b.getvalue())[1])(io.BytesIO()),
    "short_val": lambda good: npz(identity=np.array("data-sha"), val=-np.ones((2, 2)), train=GOOD["train"]),
    "long_train": lambda good: npz(identity=np.array("data-sha"), val=GOOD["val"], train=-np.ones((9, 2))),
    "flat": lambda good: npz(identity=np.array("data-sha"), val=-np.ones(6), train=GOOD["train"]),
    "three_columns": lambda good: npz(identity=np.array("data-sha"), val=-np.ones((3, 3)), train=GOOD["train"]),
    "integers": lambda good: npz(identity=np.array("data-sha"), val=np.zeros((3, 2), np.int64), train=GOOD["train"]),
    "strings": lambda good: npz(identity=np.array("data-sha"), val=np.full((3, 2), "x"), train=GOOD["train"]),
    "nan": lambda good: npz(identity=np.array("data-sha"), val=np.full((3, 2), np.nan), train=GOOD["train"]),
    "positive": lambda good: npz(identity=np.array("data-sha"), val=np.ones((3, 2)), train=GOOD["train"]),
    "no_val": lambda good: npz(identity=np.array("data-sha"), train=GOOD["train"]),
    "no_identity": lambda good: npz(val=GOOD["val"], train=GOOD["train"]),
    "identity_array": lambda good: npz(identity=np.array(["data-sha", "x"]), val=GOOD["val"]),
    "extra": lambda good: npz(identity=np.array("data-sha"), val=GOOD["val"], evil=np.zeros(1)),
    "pickled": lambda good: npz(identity=np.array("data-sha"), val=np.array([{"a": 1}], dtype=object)),
    "other_data": lambda good: npz(identity=np.array("other"), val=GOOD["val"], train=GOOD["train"]),
    "other_model": lambda good: npz(identity=np.array("data-sha"), model=np.array("other"), val=GOOD["val"]),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_every_damage_is_one_line_with_what_to_do(tmp_path, damage):
    path = tmp_path / "reference_logps.npz"
    path.write_bytes(DAMAGE[damage](good_bytes(tmp_path)))
    with pytest.raises(ReferenceError) as e:
        read(path, "data-sha", "model-sha", PAIRS)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "start a new run" in message


def test_a_folder_in_its_place_is_one_line(tmp_path):
    (tmp_path / "reference_logps.npz").mkdir()
    with pytest.raises(ReferenceError, match="missing"):
        read(tmp_path / "reference_logps.npz", "data-sha", "model-sha", PAIRS)
