"""Sharded prep: shard I of N takes a fixed part of the input and records what an exact merge needs.

**Which part of the input a shard reads.** The inputs (files, in the name order every prep command uses)
are laid end to end, ``T`` bytes in all, and cut into N equal byte ranges; shard I (from 0: ``--shard 0/8``
.. ``--shard 7/8``, as Slurm array task ids and datatrove ranks) takes every chunk of the unsharded run
whose middle byte lies in range I (`ShardSource`). Chunks are the engine's own (`prep.sources`: a
bounded run of whole records, cut with the chunk size of the whole run), so a shard parses each
document exactly as the unsharded run does; its chunks are a contiguous part of the unsharded run's,
and the shards in order are the input order. A file inside one range is one shard's alone (the others
never open it); a file across ranges (one huge file) is shared by byte ranges: each shard reads it,
without parsing, up to the end of its part. A shard may get nothing (an empty folder, still valid). A
dataset streamed through `datasets` has no size to cut: one line says so.

**What a shard writes.** A normal token folder (its own documents, deduplicated within the shard, its
own meta.json with ``options.shard = "I/N"``), plus ``shard/``:

* ``shard.json``: I, N, a fingerprint of the whole run's input list, counts;
* ``docs.bin``: one `DOC_DTYPE` record per document that reached deduplication, in input order: its
  dedup hash, what the shard did with it (kept / duplicate / near-duplicate), split, input (its
  index in meta.json's ``sources``), characters,
  text bytes, and where its location and MinHash signature end in the two blobs below;
* ``locations.bin`` (UTF-8 ``file:line`` of each document), ``signatures.bin`` (with ``--near-dedup``:
  each document's MinHash in rensa's own byte format, not a pickle);
* ``held.bin`` / ``held.idx`` (/ ``held.mask.bin``): the tokens of documents the shard dropped as
  near-duplicates: the merge keeps one of them when its original turns out to be dropped itself;
* ``id_counts.bin``: how often each id occurs in the shard's train and val splits (int64, 2 x ids),
  which `prep vocab` sums instead of reading the tokens.

`prep.merge` replays exact and near-duplicate removal over these records in shard order, which is the
unsharded run's order, so the merged folder equals the unsharded one byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from prep.records import PrepError

SHARD_DIR = "shard"
SHARD_FORMAT = 1
KEPT, DUPLICATE, NEAR_DUPLICATE = 0, 1, 2  # what the shard did with a document (`docs.bin` field "fate")
DOC_DTYPE = np.dtype([("hash", "<u8"), ("fate", "u1"), ("val", "u1"), ("source", "<u4"), ("chars", "<u8"),
                      ("bytes", "<u8"), ("target_bytes", "<u8"), ("loc_end", "<u8"), ("sig_end", "<u8")])
MAX_SHARDS = 100_000


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> ShardSpec:
    """``"I/N"`` -> ShardSpec, or `PrepError` naming what is wrong."""
    head, sep, tail = text.partition("/")
    if not (sep and head.strip().isdigit() and tail.strip().isdigit()):
        raise PrepError(f"--shard {text!r}: expected I/N, shard I (from 0) of N, e.g. 0/8")
    index, count = int(head), int(tail)
    if not 1 <= count <= MAX_SHARDS or index >= count:
        raise PrepError(f"--shard {text!r}: I must be in 0..N-1 and N in 1..{MAX_SHARDS:,}")
    return ShardSpec(index, count)


def shard_at(offset2: int, total: int, count: int) -> int:
    """The shard holding the byte at offset ``offset2 / 2`` of `total` (doubled, so a middle stays whole)."""
    return min(offset2 * count // (2 * total), count - 1)


def run_fingerprint(inputs: Sequence[Any]) -> str:
    """sha256 of the whole run's input list (names and sizes): shards of other inputs never merge."""
    listing = json.dumps([[i.name, i.n_bytes] for i in inputs], ensure_ascii=False)
    return hashlib.sha256(listing.encode("utf-8", "surrogatepass")).hexdigest()


class ShardSource:
    """Shard `spec` of `source`: the source's own chunks, so cut and parsed exactly as in the unsharded run,
    that hold their middle byte in the shard's range. Files wholly in other shards are never opened; a file
    across a boundary is read (not parsed) up to the end of this shard's part."""

    def __init__(self, source: Any, spec: ShardSpec):
        if getattr(source, "hub", None):
            raise PrepError("--shard: a dataset streamed through `datasets` cannot be sharded; download its files "
                            "(huggingface-cli download --repo-type dataset NAME --local-dir DIR) and shard DIR")
        self.source, self.spec = source, spec
        sizes = [i.n_bytes for i in source.inputs]
        self.total, self.n_inputs = sum(sizes), len(sizes)
        self.run = {"inputs": len(sizes), "bytes": self.total, "fingerprint": run_fingerprint(source.inputs)}
        self.where: dict[str, tuple[int, int, int]] = {}  # name -> (first byte, size, index)
        mine, start = [], 0
        for k, (info, size) in enumerate(zip(source.inputs, sizes, strict=True)):
            self.where[info.name] = (start, size, k)
            if self._shard(info.name, 0, 0) <= spec.index <= self._shard(info.name, size, 0):
                mine.append(k)
            start += size
        source.files = [source.files[k] for k in mine]  # (in place: a source is made for one run)
        source.inputs = [source.inputs[k] for k in mine]
        self.inputs = source.inputs

    def _shard(self, name: str, offset: int, n_bytes: int) -> int:
        """The shard of a chunk of `n_bytes` at `offset` in input `name`: where its middle byte lies."""
        start, size, k = self.where[name]
        if not self.total:
            return k * self.spec.count // self.n_inputs  # nothing to cut by bytes: by input
        middle2 = 2 * start + (min(2 * offset + n_bytes, 2 * size - 1) if size else 0)
        return shard_at(middle2, self.total, self.spec.count)

    def chunks(self) -> Iterator[Any]:
        done: dict[str, int] = {}
        for chunk in self.source.chunks():
            offset = done.get(chunk.name, 0)
            done[chunk.name] = offset + chunk.n_bytes
            if self._shard(chunk.name, offset, chunk.n_bytes) == self.spec.index:
                yield chunk


class ShardRecorder:
    """Writes ``shard/`` beside the documents while a sharded prep runs (into the folder being built)."""

    def __init__(self, path, spec: ShardSpec, run: dict, inputs: Sequence[Any], n_ids: int, masked: bool):
        self.spec, self.run, self.n_ids = spec, run, n_ids
        self.dir = Path(path(SHARD_DIR))
        self.dir.mkdir()
        names = ["docs.bin", "locations.bin", "signatures.bin", "held.bin", "held.idx"] + (
            ["held.mask.bin"] if masked else [])
        self.files: dict[str, BinaryIO] = {n: open(self.dir / n, "wb") for n in names}
        self.source_index = {i.name: k for k, i in enumerate(inputs)}
        self.counts = np.zeros((2, n_ids), np.int64)
        self.n_docs = self.loc_end = self.sig_end = self.held_docs = self.held_tokens = 0

    def chunk(self, enc: Any, fates: Sequence[int]) -> None:
        """Record the documents of one encoded chunk (`prep.pipeline.Encoded`) and what became of them."""
        n = len(fates)
        if not n:
            return
        locations = [loc.encode("utf-8", "surrogatepass") for loc in enc.locations]
        sigs = [s.__getstate__() for s in enc.sketches] if enc.sketches else [b""] * n
        recs = np.zeros(n, DOC_DTYPE)
        recs["hash"], recs["fate"], recs["val"] = enc.dedup, fates, enc.val
        recs["source"] = self.source_index[enc.name]
        recs["chars"], recs["bytes"], recs["target_bytes"] = enc.chars, enc.text_bytes, enc.target_bytes
        recs["loc_end"] = self.loc_end + np.cumsum([len(b) for b in locations])
        recs["sig_end"] = self.sig_end + np.cumsum([len(s) for s in sigs])
        self.loc_end, self.sig_end = int(recs["loc_end"][-1]), int(recs["sig_end"][-1])
        self.files["docs.bin"].write(recs.tobytes())
        self.files["locations.bin"].write(b"".join(locations))
        self.files["signatures.bin"].write(b"".join(sigs))
        self.n_docs += n
        self._tokens(enc, np.asarray(fates), recs["val"])

    def _tokens(self, enc: Any, fates: np.ndarray, val: np.ndarray) -> None:
        """Count the ids of kept documents per split; keep the tokens of near-duplicates aside."""
        lengths = np.diff(np.concatenate([[0], enc.ends]))
        for split in (0, 1):
            take = np.repeat((fates == KEPT) & (val == split), lengths)
            if take.any():
                self.counts[split] += np.bincount(enc.tokens[take], minlength=self.n_ids)[: self.n_ids]
        for i in np.flatnonzero(fates == NEAR_DUPLICATE):
            begin, end = int(enc.ends[i - 1]) if i else 0, int(enc.ends[i])
            self.files["held.idx"].write(np.array([self.held_tokens], "<u8").tobytes())
            self.files["held.bin"].write(np.ascontiguousarray(enc.tokens[begin:end], "<u4").tobytes())
            if "held.mask.bin" in self.files:
                self.files["held.mask.bin"].write(np.ascontiguousarray(enc.mask[begin:end], "u1").tobytes())
            self.held_docs, self.held_tokens = self.held_docs + 1, self.held_tokens + end - begin

    def finish(self, near_dedup: dict | None) -> None:
        """Close the files and write the counts and ``shard.json`` (the token folder's meta.json follows)."""
        self.files["held.idx"].write(np.array([self.held_tokens], "<u8").tobytes())
        for f in self.files.values():
            f.close()
        (self.dir / "id_counts.bin").write_bytes(self.counts.astype("<i8").tobytes())
        record = {"format": SHARD_FORMAT, "index": self.spec.index, "count": self.spec.count, "run": self.run,
                  "docs": self.n_docs, "held_docs": self.held_docs, "held_tokens": self.held_tokens,
                  "ids": self.n_ids, "near_dedup": near_dedup}
        (self.dir / "shard.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", "utf-8")

    def abandon(self) -> None:
        for f in self.files.values():
            f.close()


@contextlib.contextmanager
def recording(recorder: Callable | None, path: Callable[[str], Path]) -> Iterator[ShardRecorder | None]:
    """`recorder(path)` (None: not a shard), writing into the folder being built; its files closed on any exit."""
    if recorder is None:
        yield None
        return
    record = recorder(path)
    try:
        yield record
    finally:
        record.abandon()
