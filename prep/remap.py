"""Renumber a token folder made with Qwen2's tokenizer into a cut vocabulary's ids, without tokenizing again.

Exact only when every id of the folder is kept: then the cut tokenizer would have made the same pieces
(`prep.vocab`), so new id = position of the old id. A folder holding any dropped id is refused, with the
command that re-tokenizes it. A shard (`prep.shard`) stays a shard: its held tokens and id counts are
renumbered too, so remapping each shard and merging equals merging and remapping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from common.outputs import JSONFileError, read_json, write_json_atomic
from prep.shard import SHARD_DIR
from prep.tokenfile import SPLITS, Split, TokenFolder, TokenFolderWriter, open_token_folder
from prep.tokenizer import CUT_VOCAB_FILE, check_identity, is_cut_vocab_folder, load_tokenizer
from prep.vocab import VocabError, id_map

REMAPPABLE = ("pretrain", "sft")
_NOT_CARRIED = ("format_version", "kind", "tokenizer", "splits", "teacher", "selection")


def remap_folder(src: str | os.PathLike, vocab: str, out: str | os.PathLike) -> dict:
    """Write `src` renumbered into the cut vocabulary `vocab` as `out`; returns the meta.json written."""
    if not is_cut_vocab_folder(vocab):
        raise VocabError(f"{vocab}: not a cut vocabulary (no {CUT_VOCAB_FILE}); build one with `prep vocab`")
    folder = open_token_folder(src)
    if folder.kind not in REMAPPABLE:
        raise VocabError(f"{folder.path}: a {folder.kind!r} token folder; only {' and '.join(REMAPPABLE)} ones remap")
    record = _cut_record(vocab)
    check_identity(record["source"], folder.tokenizer, f"{vocab} (cut from)", f"{folder.path}'s tokenizer")
    source, cut = load_tokenizer(record["source"]["name"]), load_tokenizer(vocab)
    _check_agreement(record["kept_ids"], source, cut, vocab)
    lookup = id_map(source, record["kept_ids"], cut)
    splits = {name: folder.split(name) for name in SPLITS}
    shard = (folder.path / SHARD_DIR).is_dir()
    if shard:
        from prep.shard_read import ShardFolder

        splits["held"] = ShardFolder(folder.path).held
    for name, split in splits.items():
        _check_kept(folder, name, split, lookup, source, vocab)
    held = splits.pop("held", None)
    writer = TokenFolderWriter(out, folder.kind, cut.identity(), with_mask=folder.kind == "sft",
                               with_turns=all(s.turn_starts is not None for s in splits.values()))
    with writer:
        for name, split in splits.items():
            _copy_split(writer, name, split, lookup)
        if held is not None:
            _copy_shard(folder.path / SHARD_DIR, writer, held, lookup, len(cut))
        # A teacher's targets and a selection's scores are files beside the tokens that remapping does not
        # carry (the targets are ids of the old vocabulary): their records stay behind with them.
        extra = {k: v for k, v in folder.meta.items() if k not in _NOT_CARRIED}
        return writer.finish({**extra, "remapped_from": {"path": str(folder.path), "tokenizer": folder.tokenizer}})


def _cut_record(vocab: str) -> dict:
    """``cut_vocab.json``, checked for what remapping reads: the source's identity and the kept ids."""
    path = Path(vocab) / CUT_VOCAB_FILE
    try:
        record = read_json(path)
    except JSONFileError as e:
        raise VocabError(f"{e}; rebuild the vocabulary with `prep vocab`") from None
    kept = record.get("kept_ids") if isinstance(record, dict) else None
    if not isinstance(record.get("source") if isinstance(record, dict) else None, dict) or not isinstance(kept, list) \
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        raise VocabError(f"{path}: expected an object with 'source' (a tokenizer identity) and 'kept_ids' (a list "
                         "of ids); rebuild the vocabulary with `prep vocab`")
    return record


def _check_agreement(kept: list[int], source, cut, vocab: str) -> None:
    """The ids ``cut_vocab.json`` keeps must be the tokens of the vocabulary the result is stamped with:
    new id i is old id kept[i], byte for byte, in increasing old order, with the specials after them.
    A folder whose two files come from different cuts would otherwise give wrong ids under a genuine
    identity."""
    where = f"{vocab}: {CUT_VOCAB_FILE} does not match its vocab.json"
    n_regular = len(cut) - len(cut.special_tokens)
    if len(kept) != n_regular:
        raise VocabError(f"{where} ({len(kept):,} kept ids, {n_regular:,} regular tokens); rebuild it with `prep vocab`")
    if any(b <= a for a, b in zip(kept, kept[1:], strict=False)) or (kept and not 0 <= kept[0] <= kept[-1] < len(source)):
        raise VocabError(f"{where} (the kept ids are not increasing ids of the source); rebuild it with `prep vocab`")
    for new, old in enumerate(kept):
        if cut.token_bytes(new) != source.token_bytes(old):
            raise VocabError(f"{where} (new id {new} is {cut.token_bytes(new)!r} there, but kept id {old} is "
                             f"{source.token_bytes(old)!r}); rebuild it with `prep vocab`")


def _check_kept(folder: TokenFolder, name: str, split: Split, lookup: np.ndarray, source, vocab: str) -> None:
    gone = lookup[np.asarray(split.tokens)] < 0
    if gone.any():
        example = int(np.asarray(split.tokens)[np.argmax(gone)])
        raise VocabError(f"{folder.path}: {int(gone.sum()):,} tokens of split {name!r} are not in {vocab} "
                         f"(e.g. id {example}, {source.decode([example])!r}); re-tokenize the text with "
                         f"`--tokenizer {vocab}` instead")


def _copy_split(writer: TokenFolderWriter, name: str, split: Split, lookup: np.ndarray) -> None:
    """Every document renumbered, masks and turn starts as they were; the byte counts are the source's
    (the same text), given with the last document since only split totals are kept."""
    starts = split.doc_starts.astype(np.int64)
    turns = split.turn_starts.astype(np.int64) if split.turn_starts is not None else None
    stats = split.stats
    for d in range(split.n_docs):
        begin, end = int(starts[d]), int(starts[d + 1])
        last = d == split.n_docs - 1
        in_doc = () if turns is None else turns[np.searchsorted(turns, begin):np.searchsorted(turns, end)] - begin
        writer.add(name, lookup[np.asarray(split.tokens[begin:end])],
                   split.mask[begin:end] if split.mask is not None else None, in_doc,
                   stats.get("bytes", 0) if last else 0, stats.get("target_bytes", 0) if last else 0)


def _copy_shard(src: Path, writer: TokenFolderWriter, held: Split, lookup: np.ndarray, n_ids: int) -> None:
    """A shard's records as they are, its held tokens and id counts renumbered."""
    out = writer.folder.path(SHARD_DIR)
    out.mkdir()
    for name in ("docs.bin", "locations.bin", "signatures.bin", "held.idx", "held.mask.bin"):
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    (out / "held.bin").write_bytes(lookup[np.asarray(held.tokens)].astype("<u4").tobytes())
    old = np.fromfile(src / "id_counts.bin", "<i8").reshape(2, -1)
    counts = np.zeros((2, n_ids), np.int64)
    used = np.flatnonzero(lookup[: old.shape[1]] >= 0)
    counts[:, lookup[used]] = old[:, used]
    (out / "id_counts.bin").write_bytes(counts.astype("<i8").tobytes())
    write_json_atomic(out / "shard.json", {**read_json(src / "shard.json"), "ids": n_ids})
