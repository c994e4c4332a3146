"""The token-file format: the only interface between offline prep and training.

A dataset is a folder holding, for each split (``train``, ``val``):

* ``{split}.bin``       flat little-endian uint32 token ids (Qwen ids exceed 65,535);
* ``{split}.idx``       uint64 offset of every document / dialog start, then the token count;
* ``{split}.mask.bin``  (SFT, pref) one uint8 per token, 1 = "this token is a training target";
* ``{split}.turns.idx`` (SFT) uint64 offset of every user turn, so a sampler can start a block
  inside a dialog longer than the block; (pref) the start of each pair's two dialogs;

A ``pref`` folder (`prep.pref`) holds one document per preference pair: the chosen dialog, then the
rejected dialog, with the same prompt tokens, each ending in ``<|endoftext|>``; its mask is 1 on the
two final replies and their ``<|im_end|>``; ``{split}.turns.idx`` has two entries per pair (where each
dialog starts), so dialog ``2i`` is pair i's chosen one and ``2i + 1`` its rejected one.

and ``meta.json``, written last. A folder without ``meta.json`` is unfinished and every reader
refuses it. The writer builds the folder with `common.outputs.OutputFolder` (beside the target, swapped
in when complete, locked, typed ``tokens/pretrain`` or ``tokens/sft``), so an interrupted run (Ctrl-C,
kill -9, a full disk) never touches a previous good folder and never leaves one that looks finished,
and a typo in ``--out`` never replaces anything but a token folder of the same kind.

This module is the only code that opens these files; the trainer reads through `open_token_folder`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.outputs import JSONFileError, OutputError, OutputFolder, read_json, write_json_atomic

FORMAT_VERSION = 1
SPLITS = ("train", "val")
KINDS = ("pretrain", "sft", "pref")  # pref: preference pairs, two dialogs each (see the module docstring)
MASKED_KINDS = ("sft", "pref")  # kinds whose folders carry a loss mask
META_NAME = "meta.json"
TOKEN_DTYPE = np.dtype("<u4")
INDEX_DTYPE = np.dtype("<u8")
MASK_DTYPE = np.dtype("u1")
SHARD_MANIFEST_KIND = "zh-mini-llm/shard-manifest"  # a file naming token folders to train on as one (prep.merge)
MAX_VOCAB = 1 << 24  # a tokenizer length beyond this is a damaged meta.json, not a vocabulary


class TokenFileError(UserError, ValueError):
    """A token folder is missing, unfinished or inconsistent."""


def token_file_names() -> set[str]:
    """Every file name a token folder may hold."""
    suffixes = (".bin", ".idx", ".mask.bin", ".turns.idx")
    return {META_NAME} | {f"{split}{suffix}" for split in SPLITS for suffix in suffixes}


def _legacy_token_files(kind: str) -> Callable[[Path], set[str] | None]:
    """Recognise a token folder written before manifests existed: a meta.json of this format and kind."""

    def files(folder: Path) -> set[str] | None:
        try:
            meta = read_json(folder / META_NAME)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            return None
        if meta.get("kind") != kind:
            raise OutputError(f"{folder}: holds a {meta.get('kind')!r} token folder, not a {kind!r} one; "
                              "choose another output (nothing was changed)")
        return token_file_names()

    return files


class _SplitWriter:
    """Appends documents of one split to its files and keeps its counts."""

    def __init__(self, folder: Path, split: str, with_mask: bool, with_turns: bool):
        self.tokens = open(folder / f"{split}.bin", "wb")
        self.doc_starts = open(folder / f"{split}.idx", "wb")
        self.mask = open(folder / f"{split}.mask.bin", "wb") if with_mask else None
        self.turns = open(folder / f"{split}.turns.idx", "wb") if with_turns else None
        self.n_tokens = self.n_docs = self.n_bytes = 0
        self.n_target_tokens = self.n_target_bytes = 0

    def add(self, tokens: np.ndarray, mask, turn_starts, n_bytes: int, target_bytes: int) -> None:
        self.add_many(tokens, np.array([0, len(tokens)], INDEX_DTYPE), mask, turn_starts, n_bytes, target_bytes)

    def add_many(self, tokens: np.ndarray, starts: np.ndarray, mask, turn_starts, n_bytes: int,
                 target_bytes: int) -> None:
        """Append documents at once: `starts` holds each one's start in `tokens`, then len(tokens)."""
        self.doc_starts.write((np.asarray(starts[:-1], INDEX_DTYPE) + self.n_tokens).astype(INDEX_DTYPE).tobytes())
        self.tokens.write(np.ascontiguousarray(tokens, TOKEN_DTYPE).tobytes())
        if self.mask is not None:
            mask = np.ascontiguousarray(mask, MASK_DTYPE)
            self.mask.write(mask.tobytes())
            self.n_target_tokens += int(mask.sum(dtype=np.int64))
        if self.turns is not None and len(turn_starts):
            self.turns.write((np.asarray(turn_starts, INDEX_DTYPE) + self.n_tokens).astype(INDEX_DTYPE).tobytes())
        self.n_tokens += len(tokens)
        self.n_docs += len(starts) - 1
        self.n_bytes += n_bytes
        self.n_target_bytes += target_bytes

    def close(self) -> dict:
        self.doc_starts.write(np.array([self.n_tokens], INDEX_DTYPE).tobytes())
        for f in (self.tokens, self.doc_starts, self.mask, self.turns):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        stats = {"tokens": self.n_tokens, "docs": self.n_docs, "bytes": self.n_bytes}
        if self.mask is not None:
            stats |= {"target_tokens": self.n_target_tokens, "target_bytes": self.n_target_bytes}
        return stats

    def abandon(self) -> None:
        """Close without caring about buffered data (a full disk would fail the flush again)."""
        for f in (self.tokens, self.doc_starts, self.mask, self.turns):
            if f is not None and not f.closed:
                with contextlib.suppress(OSError):
                    f.close()


class TokenFolderWriter:
    """Writes one dataset folder. Use as a context manager; `finish()` makes it visible.

    >>> with TokenFolderWriter(Path("data_bin/wiki"), "pretrain", tok.identity()) as w:
    ...     w.add("train", ids)
    ...     w.finish({"sources": [...]})

    Leaving the block without `finish()` (an exception, Ctrl-C) deletes the partial folder. Entering it
    raises `OutputError` if `out` is in use or is anything but a token folder of the same kind.
    """

    def __init__(self, out: str | os.PathLike, kind: str, tokenizer: dict, with_mask: bool = False,
                 with_turns: bool = False):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.out = Path(out)
        self.kind = kind
        self.tokenizer = tokenizer
        self.with_mask, self.with_turns = with_mask, with_turns
        self.folder = OutputFolder(self.out, f"tokens/{kind}", "token folder", _legacy_token_files(kind))
        self.splits: dict[str, _SplitWriter] = {}

    def __enter__(self) -> TokenFolderWriter:
        self.folder.__enter__()
        try:
            self.splits = {s: _SplitWriter(self.folder.partial, s, self.with_mask, self.with_turns) for s in SPLITS}
        except BaseException as e:
            self.folder.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for w in self.splits.values():
            w.abandon()
        self.folder.__exit__(exc_type, exc, tb)

    def add(self, split: str, tokens: Sequence[int] | np.ndarray, mask: Sequence[int] | np.ndarray | None = None,
            turn_starts: Sequence[int] = (), n_bytes: int = 0, target_bytes: int = 0) -> None:
        """Append one document (already ending in <|endoftext|>) to `split`.

        `turn_starts` are offsets within the document; `n_bytes` / `target_bytes` are the UTF-8 bytes
        of its text / of its trained text, for bits-per-byte.
        """
        if (mask is not None) != self.with_mask:
            raise ValueError("mask must be given exactly when the folder was opened with_mask=True")
        if mask is not None and len(mask) != len(tokens):
            raise ValueError(f"mask has {len(mask)} entries for {len(tokens)} tokens")
        self.splits[split].add(tokens, mask, turn_starts, n_bytes, target_bytes)

    def add_docs(self, split: str, tokens: np.ndarray, starts: np.ndarray, mask: np.ndarray | None = None,
                 turn_starts: np.ndarray = (), n_bytes: int = 0, target_bytes: int = 0) -> None:
        """Append many documents of `split` at once (a merge's runs): as `add`, with offsets relative to `tokens`."""
        if (mask is not None) != self.with_mask:
            raise ValueError("mask must be given exactly when the folder was opened with_mask=True")
        self.splits[split].add_many(tokens, starts, mask, turn_starts, n_bytes, target_bytes)

    def finish(self, extra_meta: dict | None = None) -> dict:
        """Close the files, write meta.json last, and move the folder into place. Returns the meta."""
        split_stats = {name: w.close() for name, w in self.splits.items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "tokenizer": self.tokenizer,
            "splits": split_stats,
            **(extra_meta or {}),
        }
        write_json_atomic(self.folder.path(META_NAME), meta)
        self.folder.commit()
        return meta


@dataclass
class Split:
    """Read-only memmaps of one split. Nothing is loaded into RAM until sliced."""

    name: str
    tokens: np.ndarray
    doc_starts: np.ndarray  # n_docs + 1 entries; the last is the token count
    mask: np.ndarray | None
    turn_starts: np.ndarray | None
    stats: dict

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_docs(self) -> int:
        return len(self.doc_starts) - 1

    def doc(self, i: int) -> np.ndarray:
        """Tokens of document `i`, <|endoftext|> included."""
        return self.tokens[int(self.doc_starts[i]) : int(self.doc_starts[i + 1])]

    def doc_mask(self, i: int) -> np.ndarray:
        if self.mask is None:
            raise TokenFileError(f"split {self.name!r} has no loss mask (a pretraining folder)")
        return self.mask[int(self.doc_starts[i]) : int(self.doc_starts[i + 1])]


def _memmap(path: Path, dtype: np.dtype, expected: int | None) -> np.ndarray:
    if not path.is_file():
        raise TokenFileError(f"{path}: missing; the folder is damaged, rerun prep")
    size = path.stat().st_size
    if size % dtype.itemsize or (expected is not None and size != expected * dtype.itemsize):
        want = "a multiple of" if expected is None else f"{expected} x"
        raise TokenFileError(f"{path}: {size} bytes, expected {want} {dtype.itemsize}-byte entries; rerun prep")
    if size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _count(stats: object, key: str, where: str) -> int:
    value = stats.get(key) if isinstance(stats, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TokenFileError(f"{where}: expected a count {key!r} >= 0, got {value!r}; rerun prep")
    return value


def _check_offsets(offsets: np.ndarray, n_tokens: int, path: Path, last_is_end: bool) -> None:
    """Offsets into a split must rise and stay within it (a damaged index would read other documents)."""
    if not len(offsets):
        return
    bad_order = bool(np.any(np.diff(offsets.astype(np.int64)) < 0))
    top = int(offsets[-1]) if last_is_end else int(offsets.max())
    if bad_order or (last_is_end and (int(offsets[0]) != 0 or top != n_tokens)) or top > n_tokens:
        raise TokenFileError(f"{path}: offsets out of order or outside the {n_tokens:,} tokens of the split; "
                             "the folder is damaged, rerun prep")


class TokenFolder:
    """An opened, complete token folder: its meta and its splits, checked before anything reads them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META_NAME
        if not self.path.is_dir():
            raise TokenFileError(f"{self.path}: no such token folder; run `make prep-wiki` or `make prep-sft` first")
        if not meta_path.is_file():
            raise TokenFileError(
                f"{self.path}: no {META_NAME}, so the folder is incomplete (an interrupted prep?) "
                "or not a token folder; rerun prep"
            )
        try:
            self.meta = read_json(meta_path)
        except JSONFileError as e:
            raise TokenFileError(f"{e}; rerun prep") from None
        self._check_meta(meta_path)
        self._splits: dict[str, Split] = {}

    def _check_meta(self, meta_path: Path) -> None:
        meta = self.meta
        if not isinstance(meta, dict):
            raise TokenFileError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}; rerun prep")
        if meta.get("format_version") != FORMAT_VERSION:
            raise TokenFileError(f"{meta_path}: format_version {meta.get('format_version')}, this code reads "
                                 f"{FORMAT_VERSION}; rerun prep")
        if meta.get("kind") not in KINDS:
            raise TokenFileError(f"{meta_path}: kind {meta.get('kind')!r}, expected one of {KINDS}")
        tok = meta.get("tokenizer")
        if not isinstance(tok, dict) or not isinstance(tok.get("name"), str):
            raise TokenFileError(f"{meta_path}: expected a 'tokenizer' object with a 'name'; rerun prep")
        if not 0 < _count(tok, "len", f"{meta_path}: tokenizer") <= MAX_VOCAB:
            raise TokenFileError(f"{meta_path}: tokenizer len {tok['len']:,} is not a vocabulary size; rerun prep")
        if not isinstance(meta.get("splits"), dict):
            raise TokenFileError(f"{meta_path}: expected a 'splits' object; rerun prep")

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def tokenizer(self) -> dict:
        return self.meta["tokenizer"]

    def split(self, name: str) -> Split:
        """Memmap `name` (``train`` or ``val``), checked against meta.json: file sizes, offsets, and token
        ids below the tokenizer's length (a numpy max over the memmap, about a second per GB)."""
        if name not in self._splits:
            self._splits[name] = self._open_split(name)
        return self._splits[name]

    def _open_split(self, name: str) -> Split:
        meta_path = self.path / META_NAME
        stats = self.meta["splits"].get(name)
        if stats is None:
            raise TokenFileError(f"{meta_path}: no split {name!r}")
        n = _count(stats, "tokens", f"{meta_path}: split {name}")
        n_docs = _count(stats, "docs", f"{meta_path}: split {name}")
        tokens = _memmap(self.path / f"{name}.bin", TOKEN_DTYPE, n)
        starts = _memmap(self.path / f"{name}.idx", INDEX_DTYPE, n_docs + 1)
        mask = _memmap(self.path / f"{name}.mask.bin", MASK_DTYPE, n) if self.kind in MASKED_KINDS else None
        turns_path = self.path / f"{name}.turns.idx"
        turns = _memmap(turns_path, INDEX_DTYPE, None) if turns_path.exists() else None
        _check_offsets(starts, n, self.path / f"{name}.idx", last_is_end=True)
        if turns is not None:
            _check_offsets(turns, n, turns_path, last_is_end=False)
        n_ids = self.tokenizer["len"]
        top = int(tokens.max()) if n else -1
        if top >= n_ids:
            raise TokenFileError(f"{self.path / f'{name}.bin'}: token id {top} is outside the tokenizer's {n_ids:,} "
                                 "ids (a damaged file, or a wrong tokenizer in meta.json); rerun prep")
        return Split(name, tokens, starts, mask, turns, stats)


def open_token_folder(path: str | os.PathLike) -> TokenFolder:
    """Open a finished token folder, or raise `TokenFileError` with a one-line reason."""
    return TokenFolder(path)
