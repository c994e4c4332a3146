"""prep wiki on real brightmart shards with the real Qwen2 tokenizer (skipped where ../shared is absent)."""

from __future__ import annotations

import json
import unicodedata

from prep.pipeline import is_val
from prep.tokenfile import open_token_folder
from prep.wiki import DEFAULT_MIN_CHARS, run_wiki
from tests.conftest import shared_path


def test_every_document_decodes_back_to_its_nfc_text(tmp_path, qwen):
    shards = [shared_path("data", "wiki_zh", "AA", f"wiki_0{i}") for i in (0, 3)]
    src = tmp_path / "wiki/AA"
    src.mkdir(parents=True)
    for s in shards:
        (src / s.name).symlink_to(s)
    meta = run_wiki(tmp_path / "wiki", tmp_path / "out", val_fraction=0.05, workers=2, show_progress=False)

    expected: dict[str, list[str]] = {"train": [], "val": []}
    seen, read = set(), 0
    for s in shards:
        for raw in s.read_text("utf-8").splitlines():
            a, read = json.loads(raw), read + 1
            text = unicodedata.normalize("NFC", a["text"])
            body = text[len(a["title"]):] if text.startswith(a["title"]) else text
            if len(body.strip()) < DEFAULT_MIN_CHARS or text in seen:
                continue
            seen.add(text)
            expected["val" if is_val(a["id"], 0.05) else "train"].append(text + "<|endoftext|>")

    folder = open_token_folder(tmp_path / "out")
    for split, texts in expected.items():
        s = folder.split(split)
        assert s.n_docs == len(texts) > 0
        for i, text in enumerate(texts):
            assert qwen.decode(s.doc(i)) == text
        assert int(s.tokens.max()) < len(qwen) and (s.tokens == qwen.eot_id).sum() == len(texts)
    assert meta["records"]["read"] == read
    assert meta["skipped"]["stub"]["count"] > read // 4  # a third of the sample is title-only stubs
    assert meta["splits"]["train"]["bytes"] == sum(len(t.encode()) - len("<|endoftext|>") for t in expected["train"])
