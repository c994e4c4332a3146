"""`prep inspect`: counts, histogram, and a decoded document (SFT: trained tokens highlighted)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from rich.console import Console

from prep.cli import cli
from prep.inspect import SPECIAL_STYLE, TRAINED_STYLE, inspect_folder, length_histogram, render_doc
from prep.tokenfile import TokenFolderWriter
from prep.wiki import run_wiki
from tests.prep.wiki_data import write_corpus


def sft_dialog(tok, turns):
    """ChatML ids and mask, built by hand: replies and their <|im_end|> trained, all else not."""
    ids, mask, starts = [], [], []

    def add(part, trained):
        enc = [part] if isinstance(part, int) else tok.encode(part)
        ids.extend(enc)
        mask.extend([trained] * len(enc))

    for user, reply in turns:
        starts.append(len(ids))
        for part, trained in ((tok.im_start_id, 0), (f"user\n{user}", 0), (tok.im_end_id, 0), ("\n", 0),
                              (tok.im_start_id, 0), ("assistant\n", 0), (reply, 1), (tok.im_end_id, 1), ("\n", 0)):
            add(part, trained)
    add(tok.eot_id, 0)
    return ids, mask, starts


def make_sft_folder(path, tok):
    with TokenFolderWriter(path, "sft", tok.identity(), with_mask=True, with_turns=True) as w:
        for turns in ([("你好", "您好！有什么可以帮您？")], [("1+1=?", "等于2。"), ("再加1呢？", "等于3。")]):
            ids, mask, starts = sft_dialog(tok, turns)
            w.add("train", ids, mask, starts, n_bytes=10, target_bytes=5)
        w.finish({"options": {"command": "sft"}})


def test_sft_document_shows_trained_tokens_and_specials(tmp_path, byte_tokenizer):
    make_sft_folder(tmp_path / "sft", byte_tokenizer)
    console = Console(record=True, width=120)
    inspect_folder(tmp_path / "sft", doc_index=1, n_tokens=10_000, console=console)
    out = console.export_text()
    assert "train document 1 of 2: 81 tokens, 22 trained" in out
    assert "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n等于2。<|im_end|>" in out
    assert "legend: trained text" in out and "tokens per document" in out


def test_render_doc_styles_exactly_the_masked_tokens(byte_tokenizer):
    ids, mask, _ = sft_dialog(byte_tokenizer, [("问题", "回答一"), ("再问", "回答二")])
    text = render_doc(byte_tokenizer, np.array(ids), np.array(mask))
    trained = [text.plain[s.start:s.end] for s in text.spans
               if str(s.style).startswith(TRAINED_STYLE) or "underline" in str(s.style)]
    assert trained == ["回答一", "<|im_end|>", "回答二", "<|im_end|>"]
    specials = [text.plain[s.start:s.end] for s in text.spans if SPECIAL_STYLE in str(s.style)]
    assert specials.count("<|im_start|>") == 4 and specials.count("<|endoftext|>") == 1
    plain = render_doc(byte_tokenizer, np.array(ids), None)
    assert plain.plain == text.plain and not any(str(s.style).startswith(TRAINED_STYLE) for s in plain.spans)


def test_histogram_bins_are_powers_of_two():
    table = length_histogram(np.array([1, 2, 3, 5, 8, 100]))
    rows = list(zip(*[c._cells for c in table.columns], strict=True))
    assert [(r[0], r[1]) for r in rows] == [("1-1", "1"), ("2-3", "2"), ("4-7", "1"), ("8-15", "1"), ("64-127", "1")]


def test_cli_inspect_a_wiki_folder_and_its_errors(tmp_path):
    run_wiki(write_corpus(tmp_path / "w", 12), tmp_path / "out", tokenizer="bytes", workers=1, show_progress=False)
    ok = CliRunner().invoke(cli, ["inspect", str(tmp_path / "out"), "--doc", "-1", "--tokens", "30"])
    assert ok.exit_code == 0, ok.output
    assert "train document 11 of 12" in ok.output and "first 30 shown" in ok.output and "documents kept" in ok.output
    bad_doc = CliRunner().invoke(cli, ["inspect", str(tmp_path / "out"), "--doc", "12"])
    assert bad_doc.exit_code == 1 and bad_doc.output.strip() == "Error: --doc 12: split 'train' has 12 documents (0..11)"
    missing = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
