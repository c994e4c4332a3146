"""`prep pref` on the real LLaMA-Factory Chinese preference sample with the real Qwen2 tokenizer.

What each row should give is worked out here from the raw JSON (not through `prep.pref_formats`): every
kept pair's trained tokens are exactly its two replies and their <|im_end|>, the two dialogs share their
prompt tokens, and the counts of skipped pairs are those of the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prep.pref import run_pref
from prep.tokenfile import open_token_folder
from prep.tokenizer import nfc
from tests.conftest import shared_path
from tests.prep.sft_checks import Dialog, trained_runs

IM_END = "<|im_end|>"


def raw_pairs(path) -> list[tuple[str, str, str]]:
    """(prompt text, chosen, rejected) of each row, as the file has them."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for row in rows:
        prompt = "\n".join(f"{t['from']}:{nfc(t['value'].strip())}" for t in row["conversations"])
        out.append((prompt, nfc(row["chosen"]["value"].strip()), nfc(row["rejected"]["value"].strip())))
    return out


def pairs_of(folder, split: str = "train") -> list[tuple[Dialog, Dialog]]:
    s = open_token_folder(folder).split(split)
    turns = np.asarray(s.turn_starts, np.int64)
    assert len(turns) == 2 * s.n_docs  # two dialog starts per pair
    out = []
    for i in range(s.n_docs):
        begin, middle, end = int(s.doc_starts[i]), int(turns[2 * i + 1]), int(s.doc_starts[i + 1])
        assert int(turns[2 * i]) == begin
        ids, mask = s.tokens[begin:end].tolist(), s.mask[begin:end].tolist()
        cut = middle - begin
        out.append((Dialog(ids[:cut], mask[:cut], []), Dialog(ids[cut:], mask[cut:], [])))
    return out


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    path = shared_path("data", "pref", "dpo_zh_demo.json")
    out = tmp_path_factory.mktemp("pref") / "out"
    meta = run_pref(path, out, tokenizer="qwen2", max_len=100_000, val_fraction=0.0, workers=2, show_progress=False)
    return path, out, meta


def test_trained_tokens_are_exactly_the_replies_and_the_prompt_is_shared(real_run, qwen):
    path, out, _ = real_run
    expected = set((c, r) for _, c, r in raw_pairs(path))
    pairs = pairs_of(out)
    assert pairs
    for chosen, rejected in pairs:
        runs = [trained_runs(qwen, d) for d in (chosen, rejected)]
        assert all(len(r) == 1 and r[0].endswith(IM_END) for r in runs)  # one run: the final reply + <|im_end|>
        assert (runs[0][0].removesuffix(IM_END), runs[1][0].removesuffix(IM_END)) in expected
        p = chosen.mask.index(1)
        assert p == rejected.mask.index(1) and chosen.ids[:p] == rejected.ids[:p]  # the same prompt tokens
        assert qwen.decode(chosen.ids[p - 3 : p]) == "<|im_start|>assistant\n"
        assert chosen.ids[-3:] == rejected.ids[-3:] == [qwen.im_end_id, qwen.encode("\n")[0], qwen.eot_id]


def test_skip_counts_are_those_of_the_file(real_run):
    path, _, meta = real_run
    rows = raw_pairs(path)
    distinct = len(set(rows))
    identical = sum(1 for _, c, r in set(rows) if c == r)
    empty = sum(1 for _, c, r in set(rows) if not c or not r)
    assert meta["splits"]["train"]["docs"] == distinct - identical - empty
    skipped = meta["skipped"] if "skipped" in meta else {}
    counts = {k: (v["count"] if isinstance(v, dict) else v) for k, v in skipped.items()}
    assert counts.get("duplicate", 0) == len(rows) - distinct
    assert counts.get("identical_replies", 0) == identical and counts.get("empty_reply", 0) == empty
    assert "too_long" not in counts


def test_max_len_skips_pairs_whose_last_turn_does_not_fit(real_run, tmp_path, qwen):
    path, _, full = real_run
    meta = run_pref(path, tmp_path / "short", tokenizer="qwen2", max_len=600, val_fraction=0.0, workers=1,
                    show_progress=False)
    pairs = pairs_of(tmp_path / "short")
    assert all(max(len(c.ids), len(r.ids)) <= 600 for c, r in pairs)
    counts = {k: (v["count"] if isinstance(v, dict) else v) for k, v in meta["skipped"].items()}
    assert meta["splits"]["train"]["docs"] + counts["too_long"] == full["splits"]["train"]["docs"]
    fitting = sum(max(len(c.ids), len(r.ids)) <= 600 for c, r in pairs_of(real_run[1]))
    shortened = meta["splits"]["train"]["docs"] - fitting  # kept only by dropping their oldest turns
    assert shortened >= 0 and (shortened == 0) == ("oldest_turns_dropped" not in meta["repaired"])
