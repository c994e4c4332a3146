"""Qwen2's vocabulary cut to a corpus (`prep vocab`): its shape, the exactness promise, AutoTokenizer
parity, prep with it, and remapping a Qwen2 token folder into it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from prep.cli import cli
from prep.remap import remap_folder
from prep.tokenfile import open_token_folder
from prep.tokenizer import CUT_VOCAB_FILE, TiktokenTokenizer, load_tokenizer, nfc, pad_vocab_size
from prep.vocab import VocabError, merge_parts
from prep.vocab_build import build_vocab
from prep.wiki import run_wiki
from tests.conftest import ROOT

WIKI = ROOT / "sample_data" / "wiki_zh"


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    """The bundled wiki sample, tokenized with Qwen2 (~13k tokens, ~2.5k distinct ids)."""
    out = tmp_path_factory.mktemp("vocab") / "wiki"
    run_wiki(WIKI, out, val_fraction=0.2, workers=1, show_progress=False)
    return out


@pytest.fixture(scope="module")
def small(wiki):
    """1,024 ids: much of the sample's vocabulary is dropped, so both promises get exercised."""
    out = wiki.parent / "v1024"
    record = build_vocab([wiki], out, 1024)
    return out, record


def sample_texts() -> list[str]:
    rng = random.Random(0)
    with open(WIKI / "AA" / "wiki_00", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    texts += [line for t in texts for line in t.split("\n") if line][:300]  # short lines: many fully kept
    texts += ["The quick brown fox jumps over the lazy dog's back; it's 1999.", "😀🎉👍🏽 emoji 🇨🇳 ok",
              "罕见字：𠀀𪚥龘靐 e\u0301 Å", "def f(x):\n\treturn {'a': x ** 2}  # code\n", "<|im_start|>user\n你好"]
    texts += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 60))).decode("utf-8", "replace")
              for _ in range(300)]
    texts += ["".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(rng.randint(1, 30))).encode(
        "utf-8", "replace").decode("utf-8", "replace") for _ in range(300)]
    return texts


def test_folder_has_size_bytes_specials_and_merge_closure(small, qwen):
    folder, record = small
    cut = load_tokenizer(str(folder))
    assert isinstance(cut, TiktokenTokenizer) and len(cut) == record["size"] == 1024
    assert cut.identity()["vocab_size"] == pad_vocab_size(1024) == 1024
    kept = record["kept_ids"]
    assert kept == sorted(kept) and len(kept) == 1021  # old order kept: merge priority unchanged
    assert kept[:256] == list(range(256))  # every byte
    assert (cut.eot_id, cut.im_start_id, cut.im_end_id) == (1021, 1022, 1023)
    assert all(cut.token_bytes(new) == qwen.token_bytes(old) for new, old in enumerate(kept))
    parts, kept_set = merge_parts(qwen), set(kept)
    assert all(parts[i] is None or set(parts[i]) <= kept_set for i in kept)  # each can still be formed
    counts = np.bincount(np.asarray(open_token_folder(record["counted"]["folders"][0]).split("train").tokens))
    assert counts[kept].sum() > 0.6 * counts[:151643].sum() and int(np.argmax(counts)) in kept_set  # most used


def test_same_pieces_where_all_tokens_are_kept_lossless_elsewhere(small, qwen):
    cut = load_tokenizer(str(small[0]))
    texts = sample_texts()
    n_kept = 0
    for text, full, mine in zip(texts, qwen.encode_batch(texts), cut.encode_batch(texts), strict=True):
        pieces = [qwen.token_bytes(i) for i in full]
        assert cut.decode(mine) == nfc(text), text
        assert len(mine) >= len(full)
        if all(p in cut.ranks for p in pieces):
            n_kept += 1
            assert [cut.token_bytes(i) for i in mine] == pieces, text
    assert 100 < n_kept < len(texts)


def test_autotokenizer_loads_the_folder_offline_with_prep_ids(small):
    transformers = pytest.importorskip("transformers")
    folder, _ = small
    hf = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    cut = load_tokenizer(str(folder))
    assert len(hf) == len(cut)
    texts = sample_texts()
    theirs = hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert [list(t) for t in theirs] == cut.encode_batch(texts)
    assert hf.convert_tokens_to_ids("<|im_end|>") == cut.im_end_id


def test_token_increase_is_reported(small):
    _, record = small
    inc = record["token_increase"]
    (splits,) = inc.values()
    assert set(splits) == {"train", "val"}
    assert all(s["tokens_cut"] > s["tokens"] and s["docs_reencoded"] > 0 for s in splits.values())


def test_prep_with_the_cut_tokenizer_equals_remapping(wiki, tmp_path):
    """A vocabulary that keeps every id of the folder: remapping gives the very bytes prep writes."""
    vocab = tmp_path / "v4k"
    record = build_vocab([wiki], vocab, 4096, splits=("train", "val"))
    assert all(s["tokens_cut"] == s["tokens"] for s in record["token_increase"][str(wiki)].values())
    remap_folder(wiki, str(vocab), tmp_path / "remapped")
    run_wiki(WIKI, tmp_path / "direct", tokenizer=str(vocab), val_fraction=0.2, workers=1, show_progress=False)
    for split in ("train", "val"):
        for suffix in (".bin", ".idx"):
            assert (tmp_path / "remapped" / f"{split}{suffix}").read_bytes() == \
                   (tmp_path / "direct" / f"{split}{suffix}").read_bytes()
    remapped, direct = open_token_folder(tmp_path / "remapped"), open_token_folder(tmp_path / "direct")
    assert remapped.tokenizer == direct.tokenizer and remapped.tokenizer["len"] == 4096
    assert remapped.meta["splits"] == direct.meta["splits"]


def test_remap_refuses_a_folder_with_dropped_ids(small, wiki, tmp_path):
    with pytest.raises(VocabError, match=r"tokens of split 'train' are not in .*re-tokenize"):
        remap_folder(wiki, str(small[0]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_builds_from_raw_text_and_errors_are_one_line(tmp_path, wiki):
    runner = CliRunner()
    ok = runner.invoke(cli, ["vocab", str(WIKI / "AA" / "wiki_00"), "--size", "2048", "--out", str(tmp_path / "v")])
    assert ok.exit_code == 0, ok.output
    assert "2,048 ids kept" in ok.output and (tmp_path / "v" / CUT_VOCAB_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if "counting" in p.name]  # the scratch token folder is gone
    too_small = runner.invoke(cli, ["vocab", str(wiki), "--size", "100", "--out", str(tmp_path / "w")])
    assert too_small.exit_code == 1 and too_small.output.count("\n") == 1 and "between 259" in too_small.output
    not_cut = runner.invoke(cli, ["remap", str(wiki), "--tokenizer", str(wiki), "--out", str(tmp_path / "x")])
    assert not_cut.exit_code == 1 and "not a cut vocabulary" in not_cut.output


def test_a_folder_of_another_tokenizer_is_refused(tmp_path):
    from tests.train.conftest import write_pretrain

    data = write_pretrain(tmp_path / "bytes")
    with pytest.raises(Exception, match="made with tokenizer 'bytes'"):
        build_vocab([data], tmp_path / "v", 1024)


def test_remap_refuses_a_cut_vocab_json_that_disagrees_with_vocab_json(wiki, tmp_path):
    """A folder whose cut_vocab.json and vocab.json come from different cuts (or were edited) would give
    wrong ids under the vocab.json's genuine identity: refused, one line, nothing written."""
    import shutil

    vocab = tmp_path / "v4k"
    build_vocab([wiki], vocab, 4096, splits=("train", "val"))
    record = json.loads((vocab / CUT_VOCAB_FILE).read_text())
    kept = record["kept_ids"]
    unused = next(i for i in range(kept[-2] + 1, kept[-1]) if i not in kept)
    other = build_vocab([wiki], tmp_path / "v3k", 3072, splits=("train", "val"))
    mixed = {
        "swapped_id": {**record, "kept_ids": [*kept[:-1], unused]},  # same count, one token's bytes differ
        "other_cut": {**record, "kept_ids": other["kept_ids"]},  # a smaller cut's ids
        "unsorted": {**record, "kept_ids": [kept[1], kept[0], *kept[2:]]},
        "not_ids": {**record, "kept_ids": ["a"] * len(kept)},
        "no_source": {k: v for k, v in record.items() if k != "source"},
    }
    for name, content in mixed.items():
        folder = tmp_path / name
        shutil.copytree(vocab, folder)
        (folder / CUT_VOCAB_FILE).write_text(json.dumps(content))
        with pytest.raises(VocabError) as e:
            remap_folder(wiki, str(folder), tmp_path / f"out_{name}")
        assert "\n" not in str(e.value) and CUT_VOCAB_FILE in str(e.value), name
        assert not (tmp_path / f"out_{name}").exists(), name
    (tmp_path / "swapped_id" / CUT_VOCAB_FILE).write_text("{not json")
    with pytest.raises(VocabError, match=CUT_VOCAB_FILE):
        remap_folder(wiki, str(tmp_path / "swapped_id"), tmp_path / "out")


def test_remap_leaves_a_teachers_targets_behind(wiki, tmp_path):
    """Teacher targets are ids of the old vocabulary and stay with it: the remapped folder reads without them."""
    import shutil

    src = tmp_path / "taught"
    shutil.copytree(wiki, src)
    meta = json.loads((src / "meta.json").read_text())
    meta["teacher"] = {"k": 2, "temperature": 1.0, "seed": 0}
    (src / "meta.json").write_text(json.dumps(meta))
    for split in ("train", "val"):
        n = len(open_token_folder(wiki).split(split).tokens)
        (src / f"{split}.teach_ids.bin").write_bytes(np.zeros(n * 2, "<u4").tobytes())
        (src / f"{split}.teach_counts.bin").write_bytes(np.ones(n * 2, "u1").tobytes())
    vocab = tmp_path / "v4k"
    build_vocab([wiki], vocab, 4096, splits=("train", "val"))
    remap_folder(src, str(vocab), tmp_path / "remapped")
    out = open_token_folder(tmp_path / "remapped")
    assert "teacher" not in out.meta and out.teach_k == 0
    assert out.split("train").teach_ids is None
