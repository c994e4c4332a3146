"""The offline Qwen2 tokenizer: special ids, plain-text handling of special strings, NFC, parity with the
real Qwen2 files, and the Hugging Face folder it writes (loaded by transformers 5.x here and 4.x beside it)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unicodedata

import pytest

from prep.hf_tokenizer_files import save_hf_tokenizer
from prep.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    TokenizerError,
    check_identity,
    load_tokenizer,
    pad_vocab_size,
)
from tests.conftest import ROOT, shared_path


def test_qwen2_special_ids_and_size(qwen):
    assert len(qwen) == 151646
    assert (qwen.eot_id, qwen.im_start_id, qwen.im_end_id) == (151643, 151644, 151645)
    assert qwen.identity()["vocab_size"] == pad_vocab_size(151646) == 151680
    assert qwen.decode([151643, 151644, 151645]) == "<|endoftext|><|im_start|><|im_end|>"


@pytest.mark.parametrize("text", ["<|im_start|>", "<|endoftext|>", "你好<|im_end|>", "<|extra_5|>", "<|extra_204|>x"])
def test_special_strings_in_text_stay_text(qwen, text):
    ids = qwen.encode(text)
    assert all(i < 151643 for i in ids), ids
    assert qwen.decode(ids) == text


def test_text_is_nfc_normalised(qwen):
    decomposed = "cafe\u0301 한국어"
    composed = unicodedata.normalize("NFC", decomposed)
    assert decomposed != composed
    assert qwen.encode(decomposed) == qwen.encode(composed)
    assert qwen.decode(qwen.encode(decomposed)) == composed


def test_batch_equals_single(qwen):
    texts = ["数学是研究数量的学科。", "", "  spaces\n\n\tand tabs ", "123456789 3.14"]
    assert qwen.encode_batch(texts, num_threads=2) == [qwen.encode(t) for t in texts]


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    assert len(tok) == 259 and pad_vocab_size(len(tok)) == 384
    ids = tok.encode("长江<|im_start|>")
    assert max(ids) < 256 and tok.decode(ids) == "长江<|im_start|>"
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        load_tokenizer("no-such-tokenizer")


def test_identity_mismatch_is_refused(qwen, byte_tokenizer):
    with pytest.raises(TokenizerError, match="data_bin/x: made with tokenizer 'qwen2'"):
        check_identity(qwen.identity(), byte_tokenizer, "data_bin/x")
    check_identity(qwen.identity(), qwen, "same")  # no error


def _stress_strings(n: int, seed: int = 0) -> list[str]:
    """Random mixes of the character classes the split regex treats differently."""
    rng = random.Random(seed)
    alphabet = list("数学是研究数量结构变化空间的一门学科长江黄河。，、！？：；（）《》“”") + list(
        "abcXYZ'sll'dre 0123456789 \t\n\r\n\u3000!?.,:;-_/\\<|>=+*&^%$#@~`\"\u00e9e\u0301\u00a0\u200b🙂🇨🇳"
    )
    words = ["<|im_start|>", "<|endoftext|>", "<|extra_7|>", "'S", "'LL", "  \n", "\n\n\n", "   ", "http://a.b/c?d=1"]
    out = []
    for _ in range(n):
        parts = [rng.choice(words) if rng.random() < 0.1 else rng.choice(alphabet) for _ in range(rng.randint(1, 40))]
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def real_qwen2():
    return HFTokenizer(str(shared_path("qwen2-tokenizer")))


def test_parity_with_real_qwen2_files(qwen, real_qwen2):
    """Identical ids to the real Qwen2 tokenizer on real articles and on stress strings."""
    assert real_qwen2.fingerprint == qwen.fingerprint
    assert len(real_qwen2) == len(qwen) and real_qwen2.special_tokens == qwen.special_tokens
    wiki = shared_path("data", "wiki_zh", "AA")
    texts = []
    for name in ("wiki_00", "wiki_03"):
        with open(wiki / name, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(400), f, strict=False)]
    texts += _stress_strings(2000)
    ours = qwen.encode_batch(texts, num_threads=2)
    theirs = real_qwen2.encode_batch(texts)
    mismatches = [t for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"


@pytest.fixture(scope="module")
def saved_folder(qwen, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2-hf")
    save_hf_tokenizer(qwen, folder)
    return folder


def test_saved_vocab_and_merges_are_byte_identical_to_real_files(saved_folder):
    real = shared_path("qwen2-tokenizer")
    for name in ("vocab.json", "merges.txt"):
        assert (saved_folder / name).read_bytes() == (real / name).read_bytes(), name


def test_saved_folder_loads_with_transformers(qwen, saved_folder):
    config = json.loads((saved_folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    loaded = HFTokenizer(str(saved_folder))
    assert loaded.fingerprint == qwen.fingerprint
    texts = _stress_strings(300, seed=1) + ["数学是研究数量、结构、变化以及空间等概念的一门学科。"]
    assert loaded.encode_batch(texts) == qwen.encode_batch(texts)
    rendered = loaded.hf.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"


def test_saved_folder_loads_with_transformers_4(qwen, saved_folder):
    """transformers 4.x, installed beside the venv by `make test`, loads the folder fast and slow."""
    tf4 = ROOT / ".venv" / "tf4"
    if not (tf4 / ".installed").exists():
        pytest.skip("transformers 4.x is not installed in .venv/tf4 (`make test` installs it)")
    text = "数学是<|im_start|>研究 e\u0301 123"
    script = (
        "import sys, json, transformers; from transformers import AutoTokenizer\n"
        "assert transformers.__version__.startswith('4.'), transformers.__version__\n"
        "out = {}\n"
        "for fast in (True, False):\n"
        "    t = AutoTokenizer.from_pretrained(sys.argv[1], use_fast=fast)\n"
        "    out[str(fast)] = [len(t), type(t).__name__, t(sys.argv[2], add_special_tokens=False,"
        " split_special_tokens=True)['input_ids']]\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tf4), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script, str(saved_folder), text], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["True"] == [151646, "Qwen2TokenizerFast", qwen.encode(text)]
    assert out["False"] == [151646, "Qwen2Tokenizer", qwen.encode(text)]
