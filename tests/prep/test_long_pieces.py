"""A huge pre-token is encoded by the `tokenizers` BPE (bounded time) with exactly tiktoken's ids, for
Qwen2's vocabulary and a cut one; a 600 KB article of one repeated character is kept, not skipped."""

from __future__ import annotations

import json
import random

import pytest

from prep import long_pieces
from prep.long_pieces import encode_long, encode_texts, has_long_piece
from prep.tokenizer import TiktokenTokenizer, load_tokenizer


def contexts() -> list[str]:
    """Moderate texts whose long runs sit in every kind of context (tiktoken is still fast on them)."""
    rng = random.Random(0)
    runs = ["x" * 700, "ab" * 400, "啊" * 600, "!" * 700, "-=" * 300, " " * 700, "\n" * 500, "\t" * 600,
            "😀" * 300, "€" * 500, "Ωλ" * 300, "x" * 333 + "y" * 444, "".join(rng.choice("abc") for _ in range(900)),
            "".join(chr(rng.randint(0x4E00, 0x4FFF)) for _ in range(700)), "1" * 600, "'s" * 300]
    around = [("", ""), ("hello ", " world"), ("a  ", "  b"), ("前文，", "。后文"), ("x\n", "\n\ny"), ("  ", ""),
              ("", "  "), ("it", "'s ok"), ("?", "!"), ("\r\n", " z")]
    return [before + run + after for run in runs for before, after in around] + [
        "".join(rng.choice(["x" * 200, " ", "\n", "啊" * 90, "!!", "a b"]) for _ in range(30)) for _ in range(20)]


@pytest.fixture(scope="module")
def cut():
    """Qwen2 cut to its first 3,000 ids in merge order (bytes included, closed under merges by construction)."""
    qwen = load_tokenizer("qwen2")
    ranks = {token: rank for token, rank in qwen.ranks.items() if rank < 3000}
    return TiktokenTokenizer("cut3000", ranks)


@pytest.mark.parametrize("which", ["qwen2", "cut"])
def test_long_piece_bpe_gives_tiktokens_ids(which, cut, monkeypatch):
    tok = load_tokenizer("qwen2") if which == "qwen2" else cut
    monkeypatch.setattr(long_pieces, "LONG_PIECE", 150)  # so moderate runs take the long-piece route
    texts = contexts()
    assert sum(map(has_long_piece, texts)) > 150
    for text in texts:
        assert encode_long(tok, text) == tok.encode(text), text[:40]
    assert encode_texts(tok, texts) == tok.encode_batch(texts)


def test_a_600_kb_article_of_one_character_is_kept_with_exact_ids(tmp_path):
    from prep.tokenfile import open_token_folder
    from prep.wiki import run_wiki

    body = "啊" * 200_000  # 600 KB of one pre-token
    (tmp_path / "AA").mkdir()
    rows = [{"id": "1", "url": "", "title": "长", "text": "长\n" + body}, {"id": "2", "url": "", "title": "短",
                                                                         "text": "短\n这是一篇普通的文章。" * 5}]
    (tmp_path / "AA" / "wiki_00").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    meta = run_wiki(tmp_path, tmp_path / "out", val_fraction=0.0, workers=1, show_progress=False)
    assert meta["skipped"] == {} and meta["splits"]["train"]["docs"] == 2
    tok = load_tokenizer("qwen2")
    split = open_token_folder(tmp_path / "out").split("train")
    docs = [split.tokens[split.doc_starts[i] : split.doc_starts[i + 1]].tolist() for i in range(2)]
    assert tok.encode("长\n" + body) + [tok.eot_id] in docs
