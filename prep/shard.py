"""Sharded prep: shard I of N takes a fixed part of the input and records what an exact merge needs.

**Which inputs a shard reads.** The inputs (files, in the name order every prep command uses) are cut
into N contiguous ranges by bytes: input k, whose bytes start at offset ``s`` of the ``T`` bytes of all
inputs, belongs to shard ``floor((s + size/2) * N / T)`` (the shard holding its middle byte). Shards are
numbered from 0 (``--shard 0/8`` .. ``--shard 7/8``), as Slurm array task ids and datatrove ranks are. So
shard 0 holds the first files, shard N-1 the last, and concatenating the shards in order gives the
input order of the unsharded run; a shard may hold no file at all (then it is an empty folder, still
valid). A file is never split (a dataset streamed through `datasets` cannot be sharded: one line says
so); chunks are cut with the chunk size of the whole run, so every document is parsed exactly as the
unsharded run parses it.

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


def shard_of_inputs(sizes: Sequence[int], count: int) -> list[int]:
    """The shard of each input: the one holding its middle byte (by input count when every input is empty)."""
    total, start, out = sum(sizes), 0, []
    for k, size in enumerate(sizes):
        where = (2 * start + size) * count // (2 * total) if total else k * count // len(sizes)
        out.append(min(where, count - 1))
        start += size
    return out


def run_fingerprint(inputs: Sequence[Any]) -> str:
    """sha256 of the whole run's input list (names and sizes): shards of other inputs never merge."""
    listing = json.dumps([[i.name, i.n_bytes] for i in inputs], ensure_ascii=False)
    return hashlib.sha256(listing.encode("utf-8", "surrogatepass")).hexdigest()


def restrict_source(source: Any, spec: ShardSpec) -> dict:
    """Keep only shard `spec`'s inputs in `source` (its ``files`` and ``inputs``); returns the run's record."""
    if getattr(source, "hub", None):
        raise PrepError("--shard: a dataset streamed through `datasets` cannot be sharded; download its files "
                        "(huggingface-cli download --repo-type dataset NAME --local-dir DIR) and shard DIR")
    run = {"inputs": len(source.inputs), "bytes": sum(i.n_bytes for i in source.inputs),
           "fingerprint": run_fingerprint(source.inputs)}
    mine = [k for k, s in enumerate(shard_of_inputs([i.n_bytes for i in source.inputs], spec.count))
            if s == spec.index]
    source.files = [source.files[k] for k in mine]
    source.inputs = [source.inputs[k] for k in mine]
    return run


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
