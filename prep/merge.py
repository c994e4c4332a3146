"""``prep merge``: shards 0..N-1 of one prep run -> the folder the unsharded run writes, byte for byte.

Shards hold contiguous parts of the input in input order (`prep.shard`), so the unsharded run's
document order is shard 0's documents, then shard 1's, ... The merge replays in that order what the
unsharded run decides in its main process, from the records alone (no text, no tokenizer):

* **exact duplicates**: a document is dropped when an earlier one (in any earlier shard, or earlier in
  its own) has its dedup hash: one stable sort of every shard's first occurrences finds them;
* **near-duplicates** (``--near-dedup``): each remaining document's stored MinHash goes through the same
  LSH index in the same order, so the same documents are kept, including a document its shard dropped
  as similar to one that the merge drops (its tokens wait in ``shard/held.bin``);
* **counts**: records read, skips and repairs by reason (their examples are the first five in input
  order), kept documents per input, characters, and the split counts the writer makes.

The result is written with the same writer, so ``.bin``, ``.idx``, ``.mask.bin``, ``.turns.idx`` and
``meta.json`` equal the unsharded run's; ``merge.json`` beside them names the shards it came from.
`shard_id_counts` gives `prep vocab` the merged folder's id counts from the shards' stored counts.

Where copying is too costly, `write_manifest` writes a small JSON file instead that `train --data` reads
as a mixture of the shard folders, each weighted by its train tokens (so blocks are drawn as from one
folder); the shards are then read as they are: deduplicated within each shard, not across shards (the
manifest records how many documents the exact merge would drop or add).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.outputs import check_replaceable_file, json_with_keys, output_lock, write_json_atomic
from prep.near_dedup import SEED, NearDedup, NearDedupConfig
from prep.records import PrepError
from prep.shard import DUPLICATE, KEPT, NEAR_DUPLICATE
from prep.shard_read import ShardFolder, open_shards
from prep.summary import MAX_EXAMPLES, PrepStats, count_reason
from prep.tokenfile import MASKED_KINDS, SHARD_MANIFEST_KIND, SPLITS, Split, TokenFolderWriter

COPY_TOKENS = 1 << 25  # tokens copied at once (128 MB): memory stays flat whatever a shard holds
DEDUP_REASONS = ("duplicate", "near_duplicate")


@dataclass
class Replay:
    """What the unsharded run decides, per shard: which of its documents are kept; and the dedup counts."""

    keep: list[np.ndarray] = field(default_factory=list)
    skipped: dict[str, dict] = field(default_factory=dict)  # duplicate / near_duplicate, as meta.json has them
    near: NearDedup | None = None


def replay(shards: Sequence[ShardFolder]) -> Replay:
    """Exact then near-duplicate removal over every shard's documents, in input order."""
    firsts = [s.docs["fate"] != DUPLICATE for s in shards]
    hashes = np.concatenate([s.docs["hash"][f] for s, f in zip(shards, firsts, strict=True)] or [np.zeros(0, "<u8")])
    order = np.argsort(hashes, kind="stable")  # equal hashes stay in input order: the first one is kept
    ordered = hashes[order]
    earlier = np.ones(len(hashes), bool)
    if len(ordered):
        earlier[order[np.r_[True, ordered[1:] != ordered[:-1]]]] = False
    config = shards[0].record.get("near_dedup")
    out = Replay(near=NearDedup(NearDedupConfig(config["threshold"], config["ngram"], config["num_perm"]))
                 if config else None)
    at = 0
    for s, first in zip(shards, firsts, strict=True):
        keep = first.copy()
        keep[np.flatnonzero(first)] = ~earlier[at : at + int(first.sum())]
        at += int(first.sum())
        for i in np.flatnonzero(~keep):
            count_reason(out.skipped, "duplicate", s.location(int(i)))
        if out.near is not None:
            for i in np.flatnonzero(keep):
                if out.near.is_duplicate(s.sketch(int(i), out.near.config.num_perm, SEED), s.location(int(i))):
                    keep[i] = False
                    count_reason(out.skipped, "near_duplicate", s.location(int(i)))
        out.keep.append(keep)
    return out


def _merged_counts(tables: Sequence[dict], replayed: dict | None = None) -> dict:
    """Per reason: counts summed, the first examples in shard order (the input order)."""
    out: dict[str, dict] = {}
    for table in tables:
        for reason, e in table.items():
            if replayed is not None and reason in DEDUP_REASONS:
                continue
            entry = out.setdefault(reason, {"count": 0, "examples": []})
            entry["count"] += e["count"]
            entry["examples"] = (entry["examples"] + e["examples"])[:MAX_EXAMPLES]
    return out | (replayed or {})


def merged_meta(shards: Sequence[ShardFolder], plan: Replay) -> dict:
    """meta.json's counts for the merged folder (the writer adds format, kind, tokenizer and splits)."""
    sources: dict[str, dict] = {}  # by name: a file shared by shards is one input, counted in each
    for s, keep in zip(shards, plan.keep, strict=True):
        kept = np.bincount(s.docs["source"][keep], minlength=len(s.meta["sources"]))
        for src, n in zip(s.meta["sources"], kept, strict=True):
            entry = sources.setdefault(src["path"], {**src, "records_read": 0, "records_kept": 0})
            entry["records_read"] += src["records_read"]
            entry["records_kept"] += int(n)
    meta = {
        "options": shards[0].options,
        "sources": list(sources.values()),
        "records": {"read": sum(s.meta["records"]["read"] for s in shards),
                    "kept": int(sum(k.sum() for k in plan.keep)),
                    "chars": int(sum(s.docs["chars"][k].sum() for s, k in zip(shards, plan.keep, strict=True)))},
        "skipped": _merged_counts([s.meta["skipped"] for s in shards], plan.skipped),
        "repaired": _merged_counts([s.meta["repaired"] for s in shards]),
    }
    if plan.near is not None:
        meta["near_dedup"] = plan.near.to_meta()
    return meta


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Merge the shards named by `paths` into the folder `out`; returns its meta.json."""
    shards = open_shards(paths)
    plan = replay(shards)
    meta = merged_meta(shards, plan)
    if meta["records"]["kept"] == 0:
        stats = PrepStats([])
        stats.read, stats.skipped = meta["records"]["read"], meta["skipped"]
        raise PrepError(f"{meta['options'].get('input', out)}: no usable document; {stats.reasons_line()}")
    first = shards[0].folder
    writer = TokenFolderWriter(out, first.kind, first.tokenizer, with_mask=first.kind in MASKED_KINDS,
                               with_turns=(first.path / "train.turns.idx").exists())
    with writer:
        for s, keep in zip(shards, plan.keep, strict=True):
            for split in SPLITS:
                _copy_split(writer, s, keep, split)
        write_json_atomic(writer.folder.path("merge.json"), {"shards": [str(s.path) for s in shards]})
        return writer.finish(meta)


def _copy_split(writer: TokenFolderWriter, s: ShardFolder, keep: np.ndarray, split: str) -> None:
    """The kept documents of one shard's split, in order, copied in runs of consecutive documents."""
    docs, val = s.docs, int(split == "val")
    in_split = docs["val"] == val
    from_folder = (docs["fate"] == KEPT) & in_split
    held = docs["fate"] == NEAR_DUPLICATE
    rank = np.where(from_folder, np.cumsum(from_folder) - 1, np.cumsum(held) - 1)  # index in its split / held
    chosen = np.flatnonzero(keep & in_split)
    if not len(chosen):
        return
    src, pos = held[chosen], rank[chosen]
    cuts = np.flatnonzero((np.diff(pos) != 1) | (np.diff(src) != 0)) + 1
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(chosen)], strict=True):
        run = chosen[a:b]
        source = s.held if src[a] else s.folder.split(split)
        _copy_run(writer, split, source, int(pos[a]), b - a, int(docs["bytes"][run].sum()),
                  int(docs["target_bytes"][run].sum()))


def _copy_run(writer: TokenFolderWriter, split: str, source: Split, first: int, n: int, n_bytes: int,
              target_bytes: int) -> None:
    """Documents first..first+n-1 of `source`, in pieces of at most ~`COPY_TOKENS` tokens (one document at least)."""
    starts = np.asarray(source.doc_starts[first : first + n + 1], np.int64)
    d = 0
    while d < n:
        e = max(d + 1, int(np.searchsorted(starts, starts[d] + COPY_TOKENS, side="right")) - 1)
        e = min(e, n)
        begin, end = int(starts[d]), int(starts[e])
        turns = ()
        if source.turn_starts is not None:
            t = source.turn_starts
            turns = np.asarray(t[np.searchsorted(t, begin) : np.searchsorted(t, end)], np.int64) - begin
        writer.add_docs(split, source.tokens[begin:end], starts[d : e + 1] - begin,
                        source.mask[begin:end] if source.mask is not None else None, turns,
                        n_bytes if e == n else 0, target_bytes if e == n else 0)
        d = e


def shard_id_counts(shards: Sequence[ShardFolder], splits: Sequence[str]) -> np.ndarray:
    """How often each id occurs in `splits` of the merged folder: the shards' stored counts, less the documents
    the merge drops, plus the held documents it keeps (only those are read)."""
    plan = replay(shards)
    n_ids = shards[0].record["ids"]
    counts = np.zeros(n_ids, np.int64)
    for s, keep in zip(shards, plan.keep, strict=True):
        docs = s.docs
        for split in splits:
            val = int(split == "val")
            counts += s.id_counts[val]
            folder = (docs["fate"] == KEPT) & (docs["val"] == val)
            gone = np.flatnonzero(~keep[folder])  # indices within the split
            held = docs["fate"] == NEAR_DUPLICATE
            back = np.flatnonzero(keep[held] & (docs["val"][held] == val))  # indices within held
            counts -= _doc_counts(s.folder.split(split), gone, n_ids)
            counts += _doc_counts(s.held, back, n_ids)
    return counts


def _doc_counts(source: Split, docs: np.ndarray, n_ids: int) -> np.ndarray:
    counts = np.zeros(n_ids, np.int64)
    for d in docs.tolist():
        counts += np.bincount(source.doc(d), minlength=n_ids)[:n_ids]
    return counts


def write_manifest(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """A mixture file naming the shards in place (paths relative to it), weighted by their train tokens."""
    out = Path(out)
    shards = open_shards(paths)
    plan = replay(shards)
    folders, extra_docs, extra_tokens, missing = [], 0, 0, 0
    for s, keep in zip(shards, plan.keep, strict=True):
        docs = s.docs
        in_folder = docs["fate"] == KEPT
        starts = [np.asarray(s.folder.split(name).doc_starts, np.int64) for name in SPLITS]
        for val, st in enumerate(starts):
            gone = np.flatnonzero(~keep[in_folder & (docs["val"] == val)])
            extra_docs, extra_tokens = extra_docs + len(gone), extra_tokens + int((st[gone + 1] - st[gone]).sum())
        missing += int((keep & (docs["fate"] == NEAR_DUPLICATE)).sum())
        tokens = s.meta["splits"]["train"]["tokens"]
        if tokens:
            folders.append({"path": os.path.relpath(s.path.resolve(), out.resolve().parent), "weight": tokens})
    if not folders:
        raise PrepError("the shards hold no train tokens: nothing to train on")
    manifest = {"kind": SHARD_MANIFEST_KIND, "folders": folders, "shards": len(shards),
                "not_deduplicated_across_shards": {"documents": extra_docs, "tokens": extra_tokens,
                                                   "held_out_documents": missing}}
    with output_lock(out, "shard manifest", lambda: check_replaceable_file(out, json_with_keys("kind", "folders"),
                                                                            "shard manifest")):
        write_json_atomic(out, manifest)
    return manifest
