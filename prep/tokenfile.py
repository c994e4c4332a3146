"""The token-file format: the only interface between offline prep and training.

A dataset is a folder holding, for each split (``train``, ``val``):

* ``{split}.bin``       flat little-endian uint32 token ids (Qwen ids exceed 65,535);
* ``{split}.idx``       uint64 offset of every document / dialog start, then the token count;
* ``{split}.mask.bin``  (SFT, pref) one uint8 per token, 1 = "this token is a training target";
* ``{split}.turns.idx`` (SFT) uint64 offset of every user turn, so a sampler can start a block
  inside a dialog longer than the block; (pref) the start of each pair's two dialogs;
* ``{split}.teach_ids.bin`` / ``{split}.teach_counts.bin`` (optional, any LM kind; written by
  ``python -m model teach``) a teacher's sparse targets: for token j, K token ids (uint32, [N, K]) that
  the teacher sampled as the token at j from the tokens before it, with how often each was drawn
  (uint8, [N, K]; they sum to K, or to 0 where nothing trains); ``meta.json``'s ``teacher`` records K;
* ``{split}.doc_scores.bin`` (optional; written by ``python -m model select``) float64 [D, 2] of the
  SOURCE folder's D documents: mean log-likelihood per byte under the teacher and under the reference;

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
TEACH_IDS_DTYPE = np.dtype("<u4")
TEACH_COUNTS_DTYPE = np.dtype("u1")
SCORES_DTYPE = np.dtype("<f8")
SHARD_MANIFEST_KIND = "zh-mini-llm/shard-manifest"  # a file naming token folders to train on as one (prep.merge)
MAX_VOCAB = 1 << 24  # a tokenizer length beyond this is a damaged meta.json, not a vocabulary


class TokenFileError(UserError, ValueError):
    """A token folder is missing, unfinished or inconsistent."""


def token_file_names() -> set[str]:
    """Every file name a token folder may hold."""
    suffixes = (".bin", ".idx", ".mask.bin", ".turns.idx", ".teach_ids.bin", ".teach_counts.bin", ".doc_scores.bin")
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

    def __init__(self, folder: Path, split: str, with_mask: bool, with_turns: bool, teach_k: int = 0):
        self.tokens = open(folder / f"{split}.bin", "wb")
        self.doc_starts = open(folder / f"{split}.idx", "wb")
        self.mask = open(folder / f"{split}.mask.bin", "wb") if with_mask else None
        self.turns = open(folder / f"{split}.turns.idx", "wb") if with_turns else None
        self.teach_k = teach_k
        self.teach_ids = open(folder / f"{split}.teach_ids.bin", "wb") if teach_k else None
        self.teach_counts = open(folder / f"{split}.teach_counts.bin", "wb") if teach_k else None
        self.n_tokens = self.n_docs = self.n_bytes = 0
        self.n_target_tokens = self.n_target_bytes = 0

    def add(self, tokens: np.ndarray, mask, turn_starts, n_bytes: int, target_bytes: int, teach=None) -> None:
        self.add_many(tokens, np.array([0, len(tokens)], INDEX_DTYPE), mask, turn_starts, n_bytes, target_bytes, teach)

    def add_many(self, tokens: np.ndarray, starts: np.ndarray, mask, turn_starts, n_bytes: int,
                 target_bytes: int, teach=None) -> None:
        """Append documents at once: `starts` holds each one's start in `tokens`, then len(tokens); `teach` their
        teacher targets (ids, counts), each [len(tokens), teach_k], exactly when the writer has teach_k."""
        if (teach is not None) != bool(self.teach_k):
            raise ValueError("teacher targets must be given exactly when the folder was opened with teach_k")
        if teach is not None:
            ids, counts = np.ascontiguousarray(teach[0], TEACH_IDS_DTYPE), np.ascontiguousarray(teach[1], TEACH_COUNTS_DTYPE)
            if ids.shape != (len(tokens), self.teach_k) or counts.shape != ids.shape:
                raise ValueError(f"teacher targets of shape {ids.shape}/{counts.shape} for {len(tokens)} tokens, "
                                 f"K={self.teach_k}")
            self.teach_ids.write(ids.tobytes())
            self.teach_counts.write(counts.tobytes())
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
        for f in self._files():
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        stats = {"tokens": self.n_tokens, "docs": self.n_docs, "bytes": self.n_bytes}
        if self.mask is not None:
            stats |= {"target_tokens": self.n_target_tokens, "target_bytes": self.n_target_bytes}
        return stats

    def _files(self) -> tuple:
        return (self.tokens, self.doc_starts, self.mask, self.turns, self.teach_ids, self.teach_counts)

    def abandon(self) -> None:
        """Close without caring about buffered data (a full disk would fail the flush again)."""
        for f in self._files():
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
                 with_turns: bool = False, teach_k: int = 0):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.out = Path(out)
        self.kind = kind
        self.tokenizer = tokenizer
        self.with_mask, self.with_turns, self.teach_k = with_mask, with_turns, teach_k
        self.folder = OutputFolder(self.out, f"tokens/{kind}", "token folder", _legacy_token_files(kind))
        self.splits: dict[str, _SplitWriter] = {}

    def __enter__(self) -> TokenFolderWriter:
        self.folder.__enter__()
        try:
            self.splits = {s: _SplitWriter(self.folder.partial, s, self.with_mask, self.with_turns, self.teach_k)
                           for s in SPLITS}
        except BaseException as e:
            self.folder.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for w in self.splits.values():
            w.abandon()
        self.folder.__exit__(exc_type, exc, tb)

    def add(self, split: str, tokens: Sequence[int] | np.ndarray, mask: Sequence[int] | np.ndarray | None = None,
            turn_starts: Sequence[int] = (), n_bytes: int = 0, target_bytes: int = 0,
            teach: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Append one document (already ending in <|endoftext|>) to `split`.

        `turn_starts` are offsets within the document; `n_bytes` / `target_bytes` are the UTF-8 bytes
        of its text / of its trained text, for bits-per-byte; `teach` its teacher targets (ids, counts),
        each [len(tokens), teach_k], exactly when the writer was opened with `teach_k`.
        """
        if (mask is not None) != self.with_mask:
            raise ValueError("mask must be given exactly when the folder was opened with_mask=True")
        if mask is not None and len(mask) != len(tokens):
            raise ValueError(f"mask has {len(mask)} entries for {len(tokens)} tokens")
        self.splits[split].add(tokens, mask, turn_starts, n_bytes, target_bytes, teach)

    def add_doc_scores(self, split: str, scores: np.ndarray) -> None:
        """Write `split`'s ``doc_scores.bin``: float64 [D, 2] per document of the folder a selection read."""
        scores = np.ascontiguousarray(scores, SCORES_DTYPE)
        if scores.ndim != 2 or scores.shape[1] != 2:
            raise ValueError(f"document scores must be [D, 2], not {scores.shape}")
        with open(self.folder.path(f"{split}.doc_scores.bin"), "wb") as f:
            f.write(scores.tobytes())

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
    teach_ids: np.ndarray | None = None  # [n_tokens, K] uint32: a teacher's sampled ids for each token
    teach_counts: np.ndarray | None = None  # [n_tokens, K] uint8: how often each was drawn (sum K or 0)

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
        teach_ids, teach_counts = self._teach_targets(name, n)
        return Split(name, tokens, starts, mask, turns, stats, teach_ids, teach_counts)

    @property
    def teach_k(self) -> int:
        """K of the teacher targets beside the tokens (0: none)."""
        teacher = self.meta.get("teacher")
        k = teacher.get("k") if isinstance(teacher, dict) else None
        return k if isinstance(k, int) and not isinstance(k, bool) and 0 < k <= 255 else 0

    def _teach_targets(self, name: str, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        k = self.teach_k
        if not k:
            return None, None
        ids = _memmap(self.path / f"{name}.teach_ids.bin", TEACH_IDS_DTYPE, n * k).reshape(n, k)
        counts = _memmap(self.path / f"{name}.teach_counts.bin", TEACH_COUNTS_DTYPE, n * k).reshape(n, k)
        if n and int(ids.max()) >= self.tokenizer["len"]:
            raise TokenFileError(f"{self.path / f'{name}.teach_ids.bin'}: a teacher id outside the tokenizer's "
                                 f"{self.tokenizer['len']:,} ids; rerun `model teach`")
        return ids, counts

    def doc_scores(self, name: str) -> np.ndarray | None:
        """The [D, 2] float64 document scores a selection stored for split `name` (None if there are none)."""
        path = self.path / f"{name}.doc_scores.bin"
        if not path.is_file():
            return None
        return _memmap(path, SCORES_DTYPE, None).reshape(-1, 2)


def open_token_folder(path: str | os.PathLike) -> TokenFolder:
    """Open a finished token folder, or raise `TokenFileError` with a one-line reason."""
    return TokenFolder(path)
