"""`prep sft` on the real Belle samples with the real Qwen2 tokenizer.

The expected dialog of every row is worked out here independently of `prep.sft_formats` (a plain
split on "\\nHuman:" / "\\nAssistant:"), then compared with what the token folder holds.
"""

from __future__ import annotations

import json
import re

import pytest

from prep.sft import run_sft
from prep.tokenizer import nfc
from tests.conftest import shared_path
from tests.prep.sft_checks import folder_bytes, read_dialogs, trained_runs

IM_END = "<|im_end|>"


def expected_dialog(row: dict) -> list[tuple[str, str]] | None:
    """(role, text) of a Belle row, multi-turn or single-turn; None where a turn is empty (the row is skipped)."""
    if row["instruction"].startswith("Human:"):
        parts = re.split(r"\n(Human|Assistant):", "\n" + row["instruction"])[1:]
        turns = [("user" if who == "Human" else "assistant", text.strip())
                 for who, text in zip(parts[::2], parts[1::2], strict=True)]
        assert turns[-1] == ("assistant", "")
        turns[-1] = ("assistant", row["output"].strip())
    else:
        question = row["instruction"].strip() + ("\n" + row["input"].strip() if row["input"].strip() else "")
        turns = [("user", question), ("assistant", row["output"].strip())]
    return None if any(not text for _, text in turns) else [(role, nfc(text)) for role, text in turns]


@pytest.fixture(scope="module")
def belle_run(tmp_path_factory):
    folder = shared_path("data", "belle")
    out = tmp_path_factory.mktemp("sft") / "out"
    meta = run_sft(folder, out, tokenizer="qwen2", val_fraction=0.0, workers=2, show_progress=False)
    rows = []
    for name in ("Belle_open_source_1k.json", "multiturn_chat_sample.json"):  # sorted names: the run's order
        with open(folder / name, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return folder, out, meta, rows


def test_every_dialog_masks_exactly_its_replies(belle_run, qwen):
    _, out, meta, rows = belle_run
    expected, seen = [], set()
    for row in rows:
        dialog = expected_dialog(row)
        if dialog is not None and tuple(dialog) not in seen:
            seen.add(tuple(dialog))
            expected.append(dialog)
    dialogs = read_dialogs(out)
    assert len(dialogs) == len(expected) == meta["records"]["kept"]
    assert len(expected) > 1400 and meta["splits"]["val"]["docs"] == 0
    n_multi = 0
    for d, turns in zip(dialogs, expected, strict=True):
        replies = [text for role, text in turns if role == "assistant"]
        users = [text for role, text in turns if role == "user"]
        n_multi += len(replies) > 1
        # Whole dialog: the ChatML text, then <|endoftext|>.
        chatml = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)
        assert qwen.decode(d.ids) == chatml + "<|endoftext|>"
        # Mask: exactly each reply followed by <|im_end|>, the final `output` last; no user text.
        runs = trained_runs(qwen, d)
        assert runs == [r + IM_END for r in replies]
        # Special ids only from the template.
        assert [t for t in d.ids if t >= qwen.eot_id] == [qwen.im_start_id, qwen.im_end_id] * len(turns) + [qwen.eot_id]
        # turns.idx: one entry per user turn, each at its <|im_start|>, followed by "user\n" + its text.
        assert len(d.turns) == len(users)
        for offset, text in zip(d.turns, users, strict=True):
            assert d.ids[offset] == qwen.im_start_id and d.mask[offset] == 0
            assert qwen.decode(d.ids[offset + 1 : offset + 80]).startswith("user\n" + text[:20])
    assert n_multi > 300  # the multi-turn sample (314 of its 499 dialogs) really was split into turns


def test_skips_and_meta(belle_run):
    _, _, meta, rows = belle_run
    assert meta["kind"] == "sft" and meta["records"]["read"] == len(rows) == 1500
    n_empty_turn = sum(expected_dialog(r) is None for r in rows)
    skipped = {reason: e["count"] for reason, e in meta["skipped"].items()}
    assert sum(v for k, v in skipped.items() if k != "duplicate") == n_empty_turn
    assert "multiturn_chat_sample.json:59" in meta["skipped"]["empty_message"]["examples"]  # a lost user turn
    s = meta["splits"]["train"]
    assert 0 < s["target_tokens"] < s["tokens"] and 0 < s["target_bytes"] < s["bytes"]


def test_real_output_is_byte_identical_with_one_worker(belle_run, tmp_path):
    folder, out, _, _ = belle_run
    run_sft(folder / "multiturn_chat_sample.json", tmp_path / "a", workers=1, show_progress=False, val_fraction=0.0)
    run_sft(folder / "multiturn_chat_sample.json", tmp_path / "b", workers=2, show_progress=False, val_fraction=0.0)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
