"""Write a tokenizer as a Hugging Face tokenizer folder (`save_hf_tokenizer`), for exports.

A tokenizer loaded from Hugging Face saves itself. The offline Qwen2 tokenizer needs its files built:
``qwen.tiktoken`` holds only ranks; Hugging Face wants ``vocab.json`` (GPT-2's printable-character
spelling of each token) and ``merges.txt`` (the pair merged to make each token, in rank order).
Replaying BPE over each token with only lower-ranked merges recovers the pair, and reproduces the
real Qwen2 files byte for byte (tested against them).

The folder also gets a ``tokenizer.json`` (fast tokenizer, built with the ``tokenizers`` library so it
does not depend on the transformers version) and a ``tokenizer_config.json`` that names
``Qwen2Tokenizer``: transformers 5.x would otherwise write ``TokenizersBackend``, which 4.x cannot load.
"""

from __future__ import annotations

import json
from pathlib import Path

from prep.chat_template import CHATML_TEMPLATE
from prep.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN2_SPLIT_PATTERN,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    gpt2_char_to_byte,
)


def bpe_split(ranks: dict[bytes, int], token: bytes) -> list[bytes]:
    """BPE-encode `token` using only merges ranked below the token itself."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2-style vocab and merge list for a tiktoken rank table."""
    byte_to_char = {b: ch for ch, b in gpt2_char_to_byte().items()}

    def spell(b: bytes) -> str:
        return "".join(byte_to_char[x] for x in b)

    vocab = {}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[spell(token)] = rank
        if len(token) > 1:
            parts = bpe_split(ranks, token)
            if len(parts) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
            merges.append((spell(parts[0]), spell(parts[1])))
    return vocab, merges


def _fast_tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]], specials: dict[str, int]) -> str:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok.to_str(pretty=False)


def tokenizer_config(specials: dict[str, int], chat_template: str = CHATML_TEMPLATE) -> dict:
    """A ``tokenizer_config.json`` that transformers 4.x and 5.x both load as ``Qwen2Tokenizer``."""
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for t, i in specials.items()
        },
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": ENDOFTEXT,
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_qwen2_tokenizer_folder(tok: TiktokenTokenizer, folder: Path) -> None:
    """vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json, for
    Qwen2's vocabulary or Qwen2's cut to a corpus (the same pre-tokenizer, merges in the same order)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges(tok.ranks)
    specials = tok.special_tokens
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")
    (folder / "tokenizer.json").write_text(_fast_tokenizer_json(vocab, merges, specials), "utf-8")
    config = tokenizer_config(specials)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", "utf-8")
    special_map = {"eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT, "additional_special_tokens": [IM_START, IM_END]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", "utf-8")


def save_hf_tokenizer(tok: Tokenizer, folder: Path) -> bool:
    """Write `tok` as a Hugging Face tokenizer folder; False for a tokenizer with no such form (``bytes``)."""
    if isinstance(tok, TiktokenTokenizer):
        write_qwen2_tokenizer_folder(tok, folder)
    elif isinstance(tok, HFTokenizer):
        tok.hf.save_pretrained(str(folder))
    else:
        return False
    return True
