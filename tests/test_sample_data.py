"""The bundled sample_data/ that `make demo` runs on stays valid: every record is used as intended."""

from __future__ import annotations

from prep.pref import run_pref
from prep.sft import run_sft
from prep.tokenfile import open_token_folder
from prep.wiki import run_wiki
from tests.conftest import ROOT

SAMPLE = ROOT / "sample_data"


def test_wiki_sample_keeps_every_article_and_drops_the_two_stubs(tmp_path, qwen):
    meta = run_wiki(SAMPLE / "wiki_zh", tmp_path / "wiki", val_fraction=0.1, workers=1, show_progress=False)
    assert meta["records"]["kept"] == 42
    assert meta["skipped"] == {"stub": {"count": 2, "examples": ["AA/wiki_00:43", "AA/wiki_00:44"]}}
    folder = open_token_folder(tmp_path / "wiki")
    assert folder.split("val").n_docs > 0, "the demo's val split must not be empty"
    train = folder.split("train")
    texts = [qwen.decode(train.doc(i)) for i in range(train.n_docs)]
    assert any(t.startswith("数学\n\n数学是研究数量、结构、变化以及空间等概念的一门学科") for t in texts)


def test_belle_sample_parses_every_dialog(tmp_path):
    meta = run_sft(SAMPLE / "belle" / "multiturn_chat.json", tmp_path / "sft", val_fraction=0.1, workers=1,
                   show_progress=False)
    assert meta["records"]["kept"] == 48 and not meta["skipped"]
    assert open_token_folder(tmp_path / "sft").split("val").n_docs > 0


def test_pref_sample_keeps_every_pair_within_the_demo_block(tmp_path):
    meta = run_pref(SAMPLE / "pref" / "dpo_zh.jsonl", tmp_path / "pref", max_len=65, val_fraction=0.1, workers=1,
                    show_progress=False)
    assert meta["records"]["kept"] == 51 and not meta["skipped"] and not meta["repaired"]
    assert open_token_folder(tmp_path / "pref").split("val").n_docs > 0
