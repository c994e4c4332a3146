"""The prep engine that `prep wiki` and `prep sft` both run on: chunks in, token folder out.

How a run flows::

    Source.chunks()  ──▶  worker: parse(chunk, specials) -> [Document | Skipped | Repaired]
    (main process,        worker: ONE tokenizer.encode_batch over every text piece of the chunk,
     file order)                  ids (+ mask, + turn offsets), byte counts, dedup and split hashes
                     ──▶  main: drop duplicates, pick train/val, TokenFolderWriter.add, count
                          (results consumed in chunk order, so the output is deterministic)

With ``PrepJob.near_dedup`` the workers also sign each document (MinHash, `prep.near_dedup`) and the
main process drops near-duplicates of earlier kept documents, in the same order. With ``PrepJob.shard``
only that shard's inputs are read and every document's fate is recorded for `prep merge` (`prep.shard`).

API for a format (what ``prep/wiki.py`` does; ``prep/sft.py`` and ``prep/text.py`` do the same):

* A **source** (`Source`, in ``prep/sources.py`` with `Chunk` and `FileSource`) lists its inputs (`SourceInput`: display name + bytes, for meta.json and the
  progress total) and yields `Chunk`s in a fixed order. A chunk is a bounded piece of ONE input: raw
  bytes cut on a record boundary (`FileSource` does this for line-based files), or a list of already
  parsed ``(line_or_row_number, row)`` pairs (for JSON arrays or hub datasets). ``chunk.name`` +
  line numbers give exact ``file:line`` locations. Chunks keep memory flat and let one huge file use
  every core. ``prep.jsonl.json_objects(chunk)`` turns a bytes chunk of JSON lines into objects, with
  the bad-line handling every JSON-lines reader wants.
* A **parse function** ``parse(chunk, specials) -> list[Document | Skipped | Repaired]``: module level
  (it is pickled to the workers); bind format options with `functools.partial`. It never tokenizes;
  special tokens come from ``specials`` (`SpecialIds`: eot_id, im_start_id, im_end_id). A Document must
  end with its own ``Piece(special_id=specials.eot_id)``: the engine appends nothing.
* `run_prep(PrepJob(...))` does the rest and returns meta.json's content. ``PrepJob.options`` are the
  command's options as recorded in meta.json (leave out ``--out`` and ``--workers``: they do not change
  the bytes, and two runs that differ only there must write identical folders).

Guarantees: the same inputs and options give byte-identical folders, whatever ``--workers``; Ctrl-C or
an error leaves no folder behind (and an earlier good folder untouched); kill -9 leaves only the
``.NAME.partial`` folder, which readers never accept and the next run deletes; workers whose parent
died exit on their own. Memory stays flat: at most 2 x workers + 2 chunks are in flight, and the only
thing that grows is the set of 64-bit dedup hashes, ~80 bytes per kept document (85 MB for the 1M
articles of wiki_zh; the chance of one false duplicate among them is ~3e-8), and with near-dedup its
index (`prep.near_dedup`: ~3.3 KB per kept document). A missing or empty input, or no usable
document at all, raises `PrepError` (one line; the CLI prints it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from common.signals import STOP_SIGNALS, stop_signals_interrupt
from prep.long_pieces import encode_texts
from prep.near_dedup import NearDedup, NearDedupConfig
from prep.records import INVALID_UNICODE, Document, PrepError, PrepInterrupted, Repaired, Skipped
from prep.shard import DUPLICATE, KEPT, NEAR_DUPLICATE, ShardRecorder, ShardSource, ShardSpec, recording
from prep.sources import Chunk, Source
from prep.summary import PrepProgress, PrepStats, print_summary
from prep.tokenfile import MASKED_KINDS, TokenFolderWriter
from prep.tokenizer import SpecialIds, Tokenizer, TokenizerError, load_tokenizer, nfc


@dataclass
class Encoded:
    """A chunk after parse + encode: what crosses from a worker to the main process (numpy, cheap to pickle)."""

    name: str
    n_bytes: int
    file_skip: str | None
    skip_location: str  # where `file_skip` is counted: the file, or file:line
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))  # the chunk's documents, concatenated
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # token offset where each document ends
    mask: np.ndarray | None = None  # sft: 1 = trained
    turns: list[list[int]] = field(default_factory=list)  # per document: token offsets of user turns
    text_bytes: list[int] = field(default_factory=list)
    target_bytes: list[int] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    dedup: list[int] = field(default_factory=list)  # 64-bit hash of Document.dedup_key
    val: list[bool] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    repaired: list[Repaired] = field(default_factory=list)
    n_records: int = 0
    sketches: list = field(default_factory=list)  # per document, with near-dedup: its MinHash signature


def stable_hash(text: str, person: bytes) -> int:
    """64-bit blake2b of `text`: the same on every machine and run (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little")


def is_val(split_key: str, val_fraction: float) -> bool:
    """Whether a document goes to the val split: a stable function of its key alone, so it never moves."""
    return stable_hash(split_key, b"split") < val_fraction * 2.0**64


@dataclass
class _Worker:
    """What each worker process holds for the whole run (set once by `_init_worker`)."""

    tok: Tokenizer
    specials: SpecialIds
    parse: Callable
    sft: bool
    val_fraction: float
    near: NearDedupConfig | None


_WORKER: _Worker | None = None
_U32 = "I" if array("I").itemsize == 4 else "L"  # array's typecodes are C types; we need exactly 32 bits


def _init_worker(tokenizer: str, parse: Callable, kind: str, val_fraction: float, near: NearDedupConfig | None,
                 parent: int | None) -> None:
    """Load the tokenizer once per worker; in a pool, ignore Ctrl-C (the parent stops us) and watch the parent."""
    global _WORKER
    if parent is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in STOP_SIGNALS:  # the parent's handler (see stop_signals_interrupt) is not for us
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, *STOP_SIGNALS})  # held while forking
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    tok = load_tokenizer(tokenizer)
    _WORKER = _Worker(tok, tok.specials, parse, kind in MASKED_KINDS, val_fraction, near)


def _exit_when_orphaned(parent: int) -> None:
    """After a kill -9 of the main process nothing would ever stop its workers; they stop themselves."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def encode_chunk(chunk: Chunk) -> Encoded:
    """Parse one chunk and encode all its text in one tokenizer call (runs in a worker)."""
    w = _WORKER
    out = Encoded(chunk.name, chunk.n_bytes, chunk.file_skip, chunk.skip_location)
    records = [] if chunk.file_skip else w.parse(chunk, w.specials)
    docs, texts, sizes, joined = _sort_records(records, out, w.near is not None)
    if w.near is not None:
        out.sketches = w.near.sketches(joined)
    ids = iter(encode_texts(w.tok, texts))  # a huge pre-token by a BPE of bounded time (prep.long_pieces)
    text_iter = iter(zip(texts, sizes, strict=True))
    tokens, mask, ends = array(_U32), array("B"), []
    for doc in docs:
        start = len(tokens)
        turn_pieces, turns = set(doc.turn_starts), []
        n_bytes = target = chars = 0
        for k, piece in enumerate(doc.pieces):
            if k in turn_pieces:
                turns.append(len(tokens) - start)
            if piece.text is not None:
                piece_ids, (text, b) = next(ids), next(text_iter)
                n_bytes, chars, target = n_bytes + b, chars + len(text), target + (b if piece.trained else 0)
            else:
                piece_ids = [piece.special_id]
            tokens.extend(piece_ids)
            if w.sft:
                mask.frombytes((b"\x01" if piece.trained else b"\x00") * len(piece_ids))
        ends.append(len(tokens))
        _add_document(out, doc, turns, n_bytes, target, chars, w.val_fraction)
    out.tokens = np.frombuffer(tokens, np.uint32) if tokens else np.zeros(0, np.uint32)
    out.ends = np.asarray(ends, np.int64)
    out.mask = (np.frombuffer(mask, np.uint8) if mask else np.zeros(0, np.uint8)) if w.sft else None
    return out


def _sort_records(records: list, out: Encoded, join: bool) -> tuple[list[Document], list[str], list[int], list[str]]:
    """Documents to encode, all their text pieces (NFC), each piece's UTF-8 size and, if `join`, each
    document's text in one string (for near-dedup); skips and repairs go straight into `out`."""
    docs: list[Document] = []
    texts: list[str] = []
    sizes: list[int] = []
    joined: list[str] = []
    for r in records:
        if isinstance(r, Document):
            if any(p.text is None and p.special_id is None for p in r.pieces):
                raise ValueError(f"{r.location}: a Piece needs text or special_id")
            try:
                doc_texts = [nfc(p.text) for p in r.pieces if p.text is not None]
                doc_sizes = [len(t.encode("utf-8")) for t in doc_texts]
            except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape: not text
                out.skipped.append(Skipped(INVALID_UNICODE, r.location))  # (a reader that missed it)
                continue
            docs.append(r)
            texts.extend(doc_texts)
            sizes.extend(doc_sizes)
            if join:
                joined.append("".join(doc_texts))
        elif isinstance(r, Skipped):
            out.skipped.append(r)
        elif isinstance(r, Repaired):
            out.repaired.append(r)
        else:
            raise TypeError(f"parse returned {type(r).__name__}, expected Document, Skipped or Repaired")
    out.n_records = len(docs) + len(out.skipped)
    return docs, texts, sizes, joined


def _add_document(out: Encoded, doc: Document, turns: list[int], n_bytes: int, target: int, chars: int,
                  val_fraction: float) -> None:
    out.turns.append(turns)
    out.text_bytes.append(n_bytes)
    out.target_bytes.append(target)
    out.chars.append(chars)
    out.dedup.append(stable_hash(doc.dedup_key, b"dedup"))
    out.val.append(is_val(doc.split_key, val_fraction))
    out.locations.append(doc.location)


def _start_method() -> str:
    # fork shares the already loaded tokenizer and starts instantly; elsewhere fork is unsafe.
    return "fork" if sys.platform == "linux" else "spawn"


@contextmanager
def worker_pool(init_args: tuple, workers: int) -> Iterator[Any]:
    """A process pool of `workers` (None for in-process work when workers == 1), stopped on any exit.

    Created before the progress bar starts its thread, so forking never copies a thread's locks.
    """
    if workers <= 1:
        _init_worker(*init_args, None)
        yield None
        return
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed mid-task (SIGTERM or SIGHUP sent to
    # the whole process group) breaks the executor, which stops the others, where a Pool deadlocks on the
    # queue lock the dead worker held. A stop signal that lands while the workers are being forked would
    # interrupt that half way: the signals wait until the pool exists, then arrive inside the try below.
    held = {signal.SIGINT, *STOP_SIGNALS}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(_start_method()), initializer=_init_worker,
                                   initargs=(*init_args, os.getpid()))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # the running chunks finish (a second at most)


def encoded_chunks(source: Source, pool: Any, workers: int) -> Iterator[Encoded]:
    """Encoded chunks in source order. At most 2 * workers + 2 chunks in flight keeps memory flat."""
    if pool is None:
        for chunk in source.chunks():
            yield encode_chunk(chunk)
        return
    window: deque = deque()
    for chunk in source.chunks():
        window.append(pool.submit(encode_chunk, chunk))
        if len(window) >= 2 * workers + 2:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


@dataclass
class PrepJob:
    """Everything one prep run needs. `options` go into meta.json as given."""

    source: Source
    parse: Callable[[Chunk, SpecialIds], list[Document | Skipped | Repaired]]
    out: Path
    kind: str  # "pretrain", "sft" or "pref" (prep.tokenfile.KINDS)
    options: dict
    tokenizer: str = "qwen2"
    val_fraction: float = 0.005
    workers: int | None = None  # None: every core
    with_turns: bool = False  # write {split}.turns.idx (SFT)
    near_dedup: NearDedupConfig | None = None  # drop near-duplicates (prep.near_dedup), decided in input order
    title: str = "prep"
    show_progress: bool = True
    shard: ShardSpec | None = None  # only this shard of the inputs, recorded for `prep merge` (prep.shard)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_prep(job: PrepJob, console=None) -> dict:
    """Run a prep job end to end; returns the meta.json written. Raises `PrepError` for unusable input."""
    if not 0.0 <= job.val_fraction < 1.0:
        raise PrepError(f"--val-fraction must be in [0, 1), not {job.val_fraction}")
    try:
        tok = load_tokenizer(job.tokenizer)
    except TokenizerError as e:
        raise PrepError(str(e)) from None
    workers = job.workers or default_workers()
    recorder = None
    if job.shard is not None:  # (a PrepJob is the caller's: changed in a copy)
        source = ShardSource(job.source, job.shard)
        job = dataclasses.replace(job, source=source, options={**job.options, "shard": str(job.shard)})
        recorder = partial(ShardRecorder, spec=job.shard, run=source.run, inputs=source.inputs, n_ids=len(tok),
                           masked=job.kind in MASKED_KINDS)
    stats = PrepStats(job.source.inputs)
    started = time.perf_counter()
    writer = TokenFolderWriter(job.out, job.kind, tok.identity(), with_mask=job.kind in MASKED_KINDS,
                               with_turns=job.with_turns)
    init_args = (job.tokenizer, job.parse, job.kind, job.val_fraction, job.near_dedup)
    try:
        with stop_signals_interrupt():
            meta = _write(job, writer, stats, init_args, workers, console, recorder)
    except KeyboardInterrupt as e:
        raise PrepInterrupted(f"interrupted: nothing written to {job.out} (any earlier folder there is untouched)",
                              getattr(e, "signum", signal.SIGINT)) from None
    except BrokenProcessPool:
        raise PrepError(f"a worker process died (killed, or out of memory?): nothing written to {job.out}") from None
    print_summary(meta, time.perf_counter() - started, job.out, console)
    return meta


def _write(job: PrepJob, writer: TokenFolderWriter, stats: PrepStats, init_args: tuple, workers: int,
           console=None, recorder: Callable | None = None) -> dict:
    """The main-process loop: deduplicate, split, write, count. Leaving it early removes the partial folder.

    `recorder(path)`, for a shard, makes the `ShardRecorder` that notes every document's fate."""
    seen: set[int] = set()  # 64-bit dedup hashes: ~80 bytes per kept document (85 MB for 1M articles)
    near = NearDedup(job.near_dedup) if job.near_dedup is not None else None
    total = sum(i.n_bytes for i in job.source.inputs)
    with worker_pool(init_args, workers) as pool, writer, \
            PrepProgress(job.title, total, job.show_progress, console) as progress, \
            recording(recorder, writer.folder.path) as record:
        for enc in encoded_chunks(job.source, pool, workers):
            stats.add_chunk(enc)
            n_new, fates = 0, []
            for i, end in enumerate(enc.ends):
                begin = int(enc.ends[i - 1]) if i else 0
                fates.append(_fate(enc, i, seen, near))
                if fates[-1] != KEPT:
                    stats.skip("duplicate" if fates[-1] == DUPLICATE else "near_duplicate", enc.locations[i])
                    continue
                split = "val" if enc.val[i] else "train"
                mask = enc.mask[begin:end] if enc.mask is not None else None
                writer.add(split, enc.tokens[begin:end], mask, enc.turns[i], enc.text_bytes[i], enc.target_bytes[i])
                stats.keep(enc.name, enc.chars[i])
                n_new += int(end) - begin
            if record is not None:
                record.chunk(enc, fates)
            progress.advance(enc.n_bytes, n_new)
        if stats.kept == 0 and record is None:  # (a shard may hold nothing new: the merge decides)
            raise PrepError(f"{job.options.get('input', job.out)}: no usable document; {stats.reasons_line()}")
        meta = stats.to_meta(job.options)
        if near is not None:
            meta["near_dedup"] = near.to_meta()
        if record is not None:
            record.finish(near.config.describe() if near is not None else None)
        return writer.finish(meta)


def _fate(enc: Encoded, i: int, seen: set[int], near: NearDedup | None) -> int:
    """KEPT, DUPLICATE (the same key as an earlier document) or NEAR_DUPLICATE (similar to an earlier kept one)."""
    if enc.dedup[i] in seen:
        return DUPLICATE
    seen.add(enc.dedup[i])
    if near is not None and near.is_duplicate(enc.sketches[i], enc.locations[i]):
        return NEAR_DUPLICATE
    return KEPT
