"""`prep pref` formats, skips and --max-len on small hand-written files (bytes tokenizer: 1 token per byte)."""

from __future__ import annotations

import json

import pytest

from prep.pref import run_pref
from prep.records import PrepError
from tests.prep.test_pref_real import pairs_of

SYS = {"from": "system", "value": "be brief"}
FORMATS = {
    "sharegpt_pref": {"conversations": [SYS, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                        {"from": "human", "value": "2+2?"}],
                      "chosen": {"from": "gpt", "value": "4"}, "rejected": "5"},
    "trl": {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": "5"},
    "minimind": {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                 "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
    "reward": {"system": "", "history": [["hi", "hello"]], "question": "2+2?", "response_chosen": "4",
               "response_rejected": "5"},
}


def write(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def prep(tmp_path, rows, max_len=1000, name="in.jsonl"):
    write(tmp_path / name, rows)
    meta = run_pref(tmp_path / name, tmp_path / "out", tokenizer="bytes", max_len=max_len, val_fraction=0.0,
                    workers=1, show_progress=False)
    return meta, pairs_of(tmp_path / "out")


def text(tok_ids) -> str:
    return bytes(i for i in tok_ids if i < 256).decode()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_one_pair_with_the_final_replies_trained(tmp_path, fmt):
    meta, pairs = prep(tmp_path, [FORMATS[fmt]])
    assert meta["splits"]["train"]["docs"] == 1
    (chosen, rejected), = pairs
    assert text(t for t, m in zip(chosen.ids, chosen.mask, strict=True) if m) == "4"
    assert text(t for t, m in zip(rejected.ids, rejected.mask, strict=True) if m) == "5"
    assert sum(chosen.mask) == sum(rejected.mask) == 2  # the reply and <|im_end|>; "hello" is context
    assert "user\n2+2?" in text(chosen.ids)


def test_bad_pairs_are_skipped_and_counted(tmp_path):
    good = FORMATS["trl"]
    rows = [good, good, {**good, "rejected": [{"role": "assistant", "content": "4"}]}, {**good, "chosen": ""},
            {**good, "prompt": [{"role": "assistant", "content": "x"}]}, {**good, "chosen": 3}]
    meta, pairs = prep(tmp_path, rows)
    counts = {k: v["count"] for k, v in meta["skipped"].items()}
    assert counts == {"duplicate": 1, "identical_replies": 1, "empty_reply": 1, "turns_out_of_order": 1,
                      "wrong_type": 1}
    assert len(pairs) == 1


def test_minimind_pairs_must_share_their_prompt(tmp_path):
    row = FORMATS["minimind"]
    other = {**row, "rejected": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "5"}]}
    meta, _ = prep(tmp_path, [row, other])
    assert meta["skipped"]["prompts_differ"]["count"] == 1


def test_long_pairs_drop_oldest_turns_and_never_cut_a_reply(tmp_path):
    history = [[f"question {i} " * 3, f"answer {i} " * 3] for i in range(4)]
    rows = [{"history": history, "question": "last?", "response_chosen": "yes " * 5, "response_rejected": "no"},
            {"history": [], "question": "q", "response_chosen": "long " * 40, "response_rejected": "no"}]
    meta, pairs = prep(tmp_path, rows, max_len=150)
    (chosen, rejected), = pairs
    assert len(chosen.ids) <= 150 and "last?" in text(chosen.ids) and "question 0" not in text(chosen.ids)
    assert text(t for t, m in zip(chosen.ids, chosen.mask, strict=True) if m) == ("yes " * 5).strip()
    assert meta["skipped"]["too_long"]["count"] == 1
    assert meta["repaired"]["oldest_turns_dropped"]["count"] >= 2


def test_a_file_in_no_preference_format_stops_with_one_line(tmp_path):
    with pytest.raises(PrepError, match=r"in\.jsonl: no row in a preference format.*expected one of"):
        prep(tmp_path, [{"instruction": "hi", "output": "hello"}])


def test_inspect_shows_the_pair_as_two_dialogs(tmp_path):
    from rich.console import Console

    from prep.inspect import inspect_folder

    prep(tmp_path, [FORMATS["trl"]])
    console = Console(record=True, width=100)
    inspect_folder(tmp_path / "out", console=console)
    shown = console.export_text()
    assert "chosen: " in shown and "rejected: " in shown and "2 trained" in shown
