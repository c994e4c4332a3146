"""Reading shards back (`prep.shard` writes them): one shard's records, and a checked, complete set of shards.

A set of shards merges only when it is exactly shards 0..N-1 of one run: the same N, command options
(but ``shard``, and ``input``, whose path may differ between machines), tokenizer, kind and input list
(the names and sizes of all the run's inputs). Anything else is one line naming the shard at fault:
a missing shard, a shard given twice, a shard of another tokenizer, options or inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.outputs import JSONFileError, read_json
from prep.shard import DOC_DTYPE, SHARD_DIR, SHARD_FORMAT
from prep.tokenfile import META_NAME, Split, TokenFolder, open_token_folder
from prep.tokenizer import TokenizerError, check_identity

RECORD = f"{SHARD_DIR}/shard.json"


class ShardError(UserError, ValueError):
    """Shards that cannot be merged (or counted) as one run. One line."""


def _array(path: Path, dtype, n: int | None) -> np.ndarray:
    """A read-only memmap of `path`, checked to hold `n` entries (any whole number of them if None)."""
    if not path.is_file():
        raise ShardError(f"{path}: missing; the shard is damaged, rerun it")
    size = path.stat().st_size
    if size % dtype.itemsize or (n is not None and size != n * dtype.itemsize):
        raise ShardError(f"{path}: {size} bytes, expected {n} entries of {dtype.itemsize} bytes; rerun the shard")
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)


class ShardFolder:
    """One finished shard: its token folder plus the records of ``shard/``."""

    def __init__(self, path: str | os.PathLike):
        self.folder: TokenFolder = open_token_folder(path)
        self.path = self.folder.path
        try:
            rec = read_json(self.path / RECORD)
        except JSONFileError as e:
            raise ShardError(f"{self.path}: not a shard ({e}); make shards with `prep ... --shard I/N`") from None
        keys = ("index", "count", "run", "docs", "held_docs", "held_tokens", "ids")
        counts = [rec.get(k) for k in keys if k != "run"] if isinstance(rec, dict) else [None]
        if not isinstance(rec, dict) or rec.get("format") != SHARD_FORMAT or not isinstance(rec.get("run"), dict) \
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) \
                or rec["index"] >= rec["count"]:
            raise ShardError(f"{self.path / RECORD}: not a shard record of format {SHARD_FORMAT}; rerun the shard")
        self.record = rec
        d = self.path / SHARD_DIR
        self.docs = _array(d / "docs.bin", DOC_DTYPE, rec["docs"])
        self.locations = _array(d / "locations.bin", np.dtype("u1"), None)
        self.signatures = _array(d / "signatures.bin", np.dtype("u1"), None)
        self.id_counts = _array(d / "id_counts.bin", np.dtype("<i8"), 2 * rec["ids"]).reshape(2, rec["ids"])
        held_mask = d / "held.mask.bin"
        self.held = Split("held", _array(d / "held.bin", np.dtype("<u4"), rec["held_tokens"]),
                          _array(d / "held.idx", np.dtype("<u8"), rec["held_docs"] + 1),
                          _array(held_mask, np.dtype("u1"), rec["held_tokens"]) if held_mask.exists() else None,
                          None, {})

    @property
    def index(self) -> int:
        return self.record["index"]

    @property
    def count(self) -> int:
        return self.record["count"]

    @property
    def meta(self) -> dict:
        return self.folder.meta

    @property
    def options(self) -> dict:
        """The command's options without ``shard``: what the unsharded run records."""
        return {k: v for k, v in self.meta.get("options", {}).items() if k != "shard"}

    def location(self, i: int) -> str:
        ends = self.docs["loc_end"]
        return bytes(self.locations[int(ends[i - 1]) if i else 0 : int(ends[i])]).decode("utf-8", "surrogatepass")

    def sketch(self, i: int, num_perm: int, seed: int):
        """Document `i`'s MinHash, from rensa's own serialised form."""
        from rensa import RMinHash

        ends = self.docs["sig_end"]
        sketch = RMinHash(num_perm, seed)
        sketch.__setstate__(bytes(self.signatures[int(ends[i - 1]) if i else 0 : int(ends[i])]))
        return sketch


def is_shards(path: str | os.PathLike) -> bool:
    """Whether `path` is a shard, or a folder of shards (as `shard_paths` reads it)."""
    p = Path(path)
    if (p / RECORD).is_file():
        return True
    return p.is_dir() and not (p / META_NAME).exists() and any((c / RECORD).is_file() for c in p.iterdir())


def shard_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The shard folders named: each a shard, or a folder whose subfolders are the shards (sorted by name)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / META_NAME).exists():
            found = sorted(c for c in p.iterdir() if (c / RECORD).is_file())
            if not found:
                raise ShardError(f"{p}: neither a shard nor a folder of shards (none of its subfolders has {RECORD})")
            out += found
        else:
            out.append(p)
    if not out:
        raise ShardError("give the shard folders to merge (or the folder holding them)")
    return out


def open_shards(paths: Sequence[str | os.PathLike]) -> list[ShardFolder]:
    """Shards 0..N-1 of one run, in order; one line for a missing, repeated or foreign shard."""
    shards = [ShardFolder(p) for p in shard_paths(paths)]
    first = shards[0]
    by_index: dict[int, ShardFolder] = {}
    for s in shards:
        _check_same_run(first, s)
        if s.index in by_index:
            other = by_index[s.index]
            same = other.path.resolve() == s.path.resolve()
            raise ShardError(f"{s.path}: shard {s.index}/{s.count} is given twice" + (
                "" if same else f" (also as {other.path})") + "; give each shard once")
        by_index[s.index] = s
    missing = [i for i in range(first.count) if i not in by_index]
    if missing:
        names = ", ".join(f"{i}/{first.count}" for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ShardError(f"missing shard{'s' if len(missing) > 1 else ''} {names} of {first.path.parent}: "
                         f"run `prep {first.options.get('command', '...')} ... --shard I/{first.count}` for "
                         f"{'them' if len(missing) > 1 else 'it'}, or give its folder")
    return [by_index[i] for i in range(first.count)]


def _check_same_run(first: ShardFolder, s: ShardFolder) -> None:
    where = f"{s.path}: not a shard of the same run as {first.path}"
    if s.count != first.count:
        raise ShardError(f"{where} (shard {s.index}/{s.count}, not of {first.count})")
    if s.folder.kind != first.folder.kind:
        raise ShardError(f"{where} (a {s.folder.kind!r} folder, not {first.folder.kind!r})")
    try:
        check_identity(first.folder.tokenizer, s.folder.tokenizer, str(first.path), f"{s.path}'s tokenizer")
    except TokenizerError as e:
        raise ShardError(f"{e}; shards of one run share one tokenizer") from None
    # the input's path may differ (each node may mount the corpus elsewhere): the inputs are compared below
    diff = sorted(k for k in {*s.options, *first.options} if k != "input" and s.options.get(k) != first.options.get(k))
    if diff:
        k = diff[0]
        raise ShardError(f"{where} (option {k}: {s.options.get(k)!r}, not {first.options.get(k)!r})")
    if s.record["run"] != first.record["run"]:
        raise ShardError(f"{where} (made from other inputs: {s.record['run'].get('inputs')} inputs of "
                         f"{s.record['run'].get('bytes')} bytes, not {first.record['run'].get('inputs')} of "
                         f"{first.record['run'].get('bytes')})")
