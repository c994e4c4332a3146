"""Qwen2's vocabulary cut to a corpus (``python -m prep vocab``): the same tokens for its text, far fewer ids.

The output layer and the embedding are sized by the vocabulary; a Chinese corpus uses a third of Qwen2's
151,643 regular tokens. A cut vocabulary keeps

* the 256 single-byte tokens (so any text still encodes: lossless, only longer where tokens are gone),
* the corpus's most used ids, each with its whole merge path (the two tokens it is merged from, and
  theirs, down to bytes), so BPE can still form every kept token; the closure counts toward the size,
* then, while there is room, unused ids in Qwen2's merge order (a fixed size whatever the corpus),
* and the three specials, last.

Kept ids are renumbered in their old order, so merge priority is unchanged. Then on any text whose Qwen2
tokens are all kept, BPE makes the very same merges (each merge Qwen2 makes builds part of a kept token,
so it is kept, and it is still the best-ranked one available), giving the same byte pieces.

The folder is a normal Hugging Face tokenizer folder (`prep.hf_tokenizer_files`) plus ``cut_vocab.json``
(the old id of each new id, the source tokenizer, the counts), which `prep.tokenizer.load_tokenizer`
recognises to encode with tiktoken.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.errors import UserError
from prep.hf_tokenizer_files import bpe_split
from prep.tokenfile import SPLITS, TokenFolder, open_token_folder
from prep.tokenizer import (
    SPECIAL_TOKENS,
    QwenTiktokenTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    check_identity,
    load_tokenizer,
)

MIN_SIZE = 256 + len(SPECIAL_TOKENS)


class VocabError(UserError, ValueError):
    """A cut vocabulary cannot be built or used as asked."""


@lru_cache(maxsize=1)
def merge_parts(source: TiktokenTokenizer) -> list[tuple[int, int] | None]:
    """For each regular id, the two ids BPE merges to make it (None for a single byte). Cached: replaying
    151k merges takes seconds."""
    ranks = source.ranks
    parts: list[tuple[int, int] | None] = [None] * len(ranks)
    for token, rank in ranks.items():
        if len(token) > 1:
            left, right = bpe_split(ranks, token)
            parts[rank] = (ranks[left], ranks[right])
    return parts


def count_ids(folders: Sequence[TokenFolder], n_ids: int, splits: Sequence[str] = ("train",)) -> np.ndarray:
    """How often each id occurs in `splits` of `folders` (int64, one entry per id)."""
    counts = np.zeros(n_ids, np.int64)
    for folder in folders:
        for name in splits:
            tokens = folder.split(name).tokens
            for start in range(0, len(tokens), 1 << 26):  # bounded memory for a corpus of any size
                counts += np.bincount(tokens[start : start + (1 << 26)], minlength=n_ids)[:n_ids]
    return counts


def choose_ids(counts: np.ndarray, parts: list[tuple[int, int] | None], size: int) -> list[int]:
    """The regular ids to keep, in their old order: bytes, then by use (ties and unused ids in merge order),
    each with its merge path, until `size` ids with the specials."""
    budget = size - len(SPECIAL_TOKENS)
    kept = {i for i, p in enumerate(parts) if p is None}
    order = np.lexsort((np.arange(len(parts)), -counts[: len(parts)]))
    for i in order.tolist():
        if len(kept) >= budget:
            break
        new = _closure(int(i), parts, kept)
        if len(kept) + len(new) <= budget:
            kept |= new
    return sorted(kept)


def _closure(i: int, parts: list[tuple[int, int] | None], kept: set[int]) -> set[int]:
    """`i` and every token on its merge path that is not kept yet."""
    new, todo = set(), [i]
    while todo:
        j = todo.pop()
        if j in kept or j in new:
            continue
        new.add(j)
        if parts[j] is not None:
            todo.extend(parts[j])
    return new


def cut_ranks(source: TiktokenTokenizer, kept: Sequence[int]) -> dict[bytes, int]:
    """The cut rank table: kept token bytes -> new id (their position in `kept`, old order)."""
    return {source.token_bytes(old): new for new, old in enumerate(kept)}


def id_map(source: Tokenizer, kept: Sequence[int], cut: Tokenizer) -> np.ndarray:
    """Old id -> new id (-1 where the id is not kept), specials included."""
    lookup = np.full(len(source), -1, np.int64)
    lookup[np.asarray(kept, np.int64)] = np.arange(len(kept))
    for text, i in source.special_tokens.items():
        lookup[i] = cut.special_tokens[text]
    return lookup


def source_tokenizer(folders: Sequence[TokenFolder]) -> QwenTiktokenTokenizer:
    """Qwen2's tokenizer, checked to be the one every counted folder was made with."""
    qwen = load_tokenizer("qwen2")
    for folder in folders:
        check_identity(folder.tokenizer, qwen, str(folder.path), "a cut vocabulary's source, Qwen2's own")
    return qwen


def open_folders(paths: Sequence[str | os.PathLike]) -> list[TokenFolder]:
    if not paths:
        raise VocabError("give at least one token folder to count ids in")
    return [open_token_folder(Path(p)) for p in paths]


def check_size(size: int, source: Tokenizer) -> None:
    if not MIN_SIZE <= size <= len(source):
        raise VocabError(f"--size {size:,}: a cut vocabulary has between {MIN_SIZE} (bytes and specials) and "
                         f"{len(source):,} (all of Qwen2) ids")


def split_names(folder: TokenFolder) -> list[str]:
    """The splits a folder has tokens in (a held-out folder may have all its documents in one)."""
    return [s for s in SPLITS if folder.meta["splits"].get(s, {}).get("tokens")]
