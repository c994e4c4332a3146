"""Input discovery and the streaming JSON-array reader."""

from __future__ import annotations

import json

import pytest

from prep import row_sources
from prep.records import PrepError
from prep.row_sources import hub_rows, is_json_array, iter_json_array, looks_like_hub_name


@pytest.fixture(params=[1 << 20, 7], ids=["big-reads", "7-char-reads"])
def read_size(request, monkeypatch):
    """Tiny reads force every element across buffer boundaries."""
    monkeypatch.setattr(row_sources, "_READ_SIZE", request.param)


def test_array_elements_and_lines(tmp_path, read_size):
    rows = [{"instruction": "第一\n行", "output": "x"}, [1, 2], 12345, "字符串", {"a": {"b": [None, True]}}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    got = list(iter_json_array(path))
    assert [r for _, r, _ in got] == rows
    lines = path.read_text("utf-8").splitlines()
    for line, row, n_bytes in got:  # each element starts on the line reported, and is n_bytes of JSON
        text = json.dumps(row, ensure_ascii=False, indent=2)
        assert lines[line - 1].strip().startswith(text.splitlines()[0])
        assert n_bytes == len(text.replace("\n", "\n  ").encode())  # indented one level inside the array


def test_array_compact_bom_and_empty(tmp_path, read_size):
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"k": i} for i in range(50)]).encode())
    assert [r["k"] for _, r, _ in iter_json_array(path)] == list(range(50))
    assert is_json_array(path)
    path.write_text(" [ ] \n")
    assert list(iter_json_array(path)) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"a": 1},\n {"a": }]', ":2: invalid JSON"),
        ('[{"a": 1}\n {"a": 2}]', ":2: expected ','"),
        ('[{"a": 1},\n', ":2: the JSON array is not closed"),
        ('[{"a": 1}] x', "unexpected text after"),
        ('{"a": 1}', "expected a JSON array"),
    ],
)
def test_array_errors_name_file_and_line(tmp_path, read_size, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PrepError, match=message) as e:
        list(iter_json_array(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_jsonl_is_not_an_array(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('\n\n{"a": [1]}\n')
    assert not is_json_array(path)


def test_hub_names_and_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert looks_like_hub_name("BelleGroup/multiturn_chat_0.8M")
    assert not looks_like_hub_name("data/belle")  # a typo under an existing folder: a path
    assert not looks_like_hub_name("typo/belle.json") and not looks_like_hub_name("./a/b")
    assert not looks_like_hub_name("a/b/c") and not looks_like_hub_name("data")


def test_hub_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrepError) as e:
        list(hub_rows("BelleGroup/multiturn_chat_0.8M"))
    message = str(e.value)
    assert message.startswith("BelleGroup/multiturn_chat_0.8M: cannot load") and "HF_HUB_OFFLINE" in message
    assert "\n" not in message


def test_datasets_path_on_a_local_folder(tmp_path, monkeypatch):
    """The `datasets` route itself, offline: a local folder that `load_dataset` understands."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    rows = [{"instruction": f"Human:q{i}\nAssistant:", "input": "", "output": f"a{i}"} for i in range(3)]
    (tmp_path / "data" / "train.json").write_text("\n".join(json.dumps(r) for r in rows))
    assert list(hub_rows(str(tmp_path / "data"))) == list(enumerate(rows, 1))
