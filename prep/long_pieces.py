"""Texts holding one huge pre-token (600 KB of one repeated letter, a line of dashes): exact ids in
bounded time.

BPE merges inside one pre-token (a run of letters, of punctuation or of spaces). tiktoken's merge loop
is fast on ordinary pieces but its cost on one huge piece depends on its version (some take the square
of the length). A piece longer than `LONG_PIECE` characters is therefore encoded by the ``tokenizers``
library's BPE model (a priority queue of merges: n log n, in Rust), built from the very same ranks
(`prep.hf_tokenizer_files.vocab_and_merges`), so the ids are those tiktoken would give; everything
around such pieces is still encoded by tiktoken. Cutting the text at pre-token boundaries keeps the ids
exact: a pre-token's merges never cross its ends, and the split of the text between two boundaries is
the split it has inside the whole text (the pattern's only look-ahead, ``\\s+(?!\\S)``, gives the same
pieces at a boundary).

Memory grows linearly with the piece (about 90 bytes per byte of it in ``tokenizers``); a record is at
most `prep.sources.MAX_RECORD_BYTES`, which bounds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import regex

from prep.hf_tokenizer_files import vocab_and_merges
from prep.tokenizer import QWEN2_SPLIT_PATTERN, TiktokenTokenizer, Tokenizer, nfc

LONG_PIECE = 100_000  # characters; tiktoken takes ~0.1 s on a piece this long whatever its version
_RUNS = re.compile(r"\w+|[^\w\s]+|\s+")  # a cheap bound: no pre-token is longer than the longest such run
_SPLIT = regex.compile(QWEN2_SPLIT_PATTERN)


def has_long_piece(text: str) -> bool:
    """Whether `text` may hold a pre-token over `LONG_PIECE` characters (never False when it does)."""
    return len(text) > LONG_PIECE and max(map(len, _RUNS.findall(text)), default=0) > LONG_PIECE


def encode_texts(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`tok.encode_batch(texts)`, with a tiktoken tokenizer's huge pre-tokens encoded by `long_bpe`."""
    long = [has_long_piece(t) for t in texts] if isinstance(tok, TiktokenTokenizer) else []
    if not any(long):
        return tok.encode_batch(texts)
    return [encode_long(tok, t) if is_long else tok.encode(t) for t, is_long in zip(texts, long, strict=True)]


def encode_long(tok: TiktokenTokenizer, text: str) -> list[int]:
    """Ids of `text` (NFC): tiktoken between its long pre-tokens, the ``tokenizers`` BPE on each of them."""
    text = nfc(text)
    ids: list[int] = []
    start = 0
    for m in _SPLIT.finditer(text):
        if m.end() - m.start() > LONG_PIECE:
            ids += tok.encoding.encode_ordinary(text[start : m.start()])
            ids += long_bpe(tok).encode(m.group()).ids
            start = m.end()
    ids += tok.encoding.encode_ordinary(text[start:])
    return ids


@lru_cache(maxsize=2)
def long_bpe(tok: TiktokenTokenizer):
    """A ``tokenizers`` BPE over `tok`'s ranks that encodes one pre-token (no splitting, no normalising;
    GPT-2's byte-to-character spelling, as its vocab and merges are written). Built on first use: a few
    seconds for Qwen2's 151k merges, once per process."""
    from tokenizers import Tokenizer as Fast
    from tokenizers import models, pre_tokenizers

    vocab, merges = vocab_and_merges(tok.ranks)
    bpe = Fast(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return bpe
