"""``python -m model teach``: a teacher's sparse targets beside every token of a token folder.

Random-sampling distillation ("Sparse Logit Sampling", Anshumann et al., ACL 2025): for each position the
teacher's next-token distribution (at `temperature`) is sampled K times with replacement; the distinct ids
and how often each came up are stored (`prep.tokenfile`: ``teach_ids`` uint32 and ``teach_counts`` uint8,
[N, K] each, so 5·K bytes per token: 60 at K=12). counts/K is an unbiased estimate of the teacher's
distribution, unlike the top-k ids, which sharpen the student. For an SFT folder only positions the loss
mask trains are sampled (others hold count 0).

Token j's targets are the teacher's distribution for token j given the document's tokens before it, from
its start token (documents are scored on their own, as ``model bpb`` does; a document longer than the
teacher's context in windows that start half a context apart). A cut data vocabulary is mapped both ways
(`model.teach.vocab_map`), with the dropped ids' mass folded and reported. The pass is resumable
(`model.teach.chunks`) and never reads more of the corpus than one chunk of documents.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.progress import bar
from model.distill_loss import DEFAULT_K
from model.measure.bpb import windows
from model.teach.chunks import ChunkStore, doc_chunks, file_digest
from model.teach.teacher import Teacher, TeacherError, load_teacher
from model.teach.vocab_map import VocabMap, vocab_map
from prep.tokenfile import META_NAME, SPLITS, TokenFolder, TokenFolderWriter, open_token_folder
from prep.tokenizer import recorded_tokenizer

TEACHABLE = ("pretrain", "sft")
SAMPLE_ROWS = 512  # positions whose full distributions are sampled at once (512 x 151,646 fp32 = 310 MB)


@dataclass
class TeachOptions:
    k: int = DEFAULT_K
    temperature: float = 1.0
    seed: int = 0
    context: int | None = None  # teacher tokens per window (default: its own, at most 1,024)
    batch_tokens: int = 2048  # padded tokens per teacher forward pass (its logits are batch x V fp32)
    chunk_tokens: int = 1 << 16  # tokens per resumable chunk


def teach(data: str | os.PathLike, teacher_spec: str, out: str | os.PathLike, opts: TeachOptions,
          device: str = "auto", dtype: str = "auto", console=None) -> dict:
    """Write `out`: `data`'s tokens with the teacher's targets; returns its meta.json."""
    folder = open_token_folder(data)
    if folder.kind not in TEACHABLE:
        raise TeacherError(f"{folder.path}: a {folder.kind!r} token folder; teacher targets go with "
                           f"{' and '.join(TEACHABLE)} ones")
    if not 1 <= opts.k <= 255:
        raise TeacherError(f"K={opts.k}: between 1 and 255 samples per token (counts are one byte)")
    if not (opts.temperature > 0 and math.isfinite(opts.temperature)):
        raise TeacherError(f"temperature {opts.temperature}: a positive number")
    data_tok = recorded_tokenizer(folder.tokenizer, str(folder.path))
    teacher = load_teacher(teacher_spec, data_tok, device, dtype)
    vmap = vocab_map(teacher.vocab, data_tok)
    context = min(opts.context or min(teacher.context, 1024), teacher.context)
    job = {"source": file_digest(folder.path / META_NAME), "teacher": teacher.record, "k": opts.k,
           "temperature": opts.temperature, "seed": opts.seed, "context": context, "chunk_tokens": opts.chunk_tokens}
    sampler = _Sampler(teacher, vmap, opts, context, data_tok.eot_id)
    with ChunkStore(out, job) as store:
        total = sum(folder.split(s).n_tokens for s in SPLITS)
        with bar(console, "teacher targets", total, "tok") as advance:
            for name in SPLITS:
                split = folder.split(name)
                for c, (first, end) in enumerate(doc_chunks(split.doc_starts, opts.chunk_tokens)):
                    key = f"{name}.{c:06d}"
                    if not store.has(key):
                        store.save(key, **sampler.chunk(split, first, end, (opts.seed, SPLITS.index(name), c)))
                    advance(int(split.doc_starts[end] - split.doc_starts[first]))
        meta = _write(folder, out, store, opts, job)
        store.finish()
    return meta


class _Sampler:
    """The teacher's targets of a range of documents: forward passes in windows, then K samples a position."""

    def __init__(self, teacher: Teacher, vmap: VocabMap, opts: TeachOptions, context: int, eot_id: int):
        self.t, self.vmap, self.opts, self.context = teacher, vmap, opts, context
        start = teacher.scored.start_id
        self.start = start if start is not None else int(vmap.to_teacher[eot_id])
        dev = teacher.device
        self.fold = torch.from_numpy(vmap.fold).to(dev)
        self.dropped = torch.from_numpy(vmap.dropped).to(dev, torch.float32)

    def chunk(self, split, first: int, end: int, seed: tuple[int, int, int]) -> dict[str, np.ndarray]:
        base = int(split.doc_starts[first])
        n = int(split.doc_starts[end]) - base
        ids = np.zeros((n, self.opts.k), np.uint32)
        counts = np.zeros((n, self.opts.k), np.uint8)
        trains = np.ones(n, bool) if split.mask is None else np.asarray(split.mask[base : base + n]) != 0
        rows = []  # (teacher input ids, first position it predicts, how many)
        for d in range(first, end):
            s, e = int(split.doc_starts[d]) - base, int(split.doc_starts[d + 1]) - base
            if not trains[s:e].any():
                continue
            seq = self.vmap.to_teacher[np.asarray(split.tokens[base + s : base + e], np.int64)].tolist()
            done = s
            for row in windows(seq, self.start, self.context, max(1, self.context // 2)):
                rows.append((row.ids[:-1], done, row.n_scored))
                done += row.n_scored
        gen = torch.Generator(self.t.device).manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
        health = np.zeros(3)  # dropped mass, mass outside the mapped ids, positions sampled
        for batch in _batches(rows, self.opts.batch_tokens):
            self._run(batch, trains, ids, counts, gen, health)
        return {"ids": ids, "counts": counts, "health": health}

    def _run(self, batch, trains, ids, counts, gen, health) -> None:
        """One forward pass over `batch`, then the trained positions of all its rows sampled together."""
        width = max(len(inp) for inp, _, _ in batch)
        x = torch.zeros(len(batch), width, dtype=torch.long)
        for b, (inp, _, _) in enumerate(batch):
            x[b, : len(inp)] = torch.tensor(inp)
        lengths = torch.tensor([len(inp) for inp, _, _ in batch])
        logits = self.t.logits(x.to(self.t.device), lengths.to(self.t.device))
        rows, cols, where = [], [], []
        for b, (inp, pos, n) in enumerate(batch):
            keep = np.flatnonzero(trains[pos : pos + n])
            rows += [b] * len(keep)
            cols += (len(inp) - n + keep).tolist()
            where += (pos + keep).tolist()
        if not where:
            return
        picked = logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)]
        where = np.asarray(where)
        for s in range(0, len(where), SAMPLE_ROWS):
            ids[where[s : s + SAMPLE_ROWS]], counts[where[s : s + SAMPLE_ROWS]] = self._sample(
                picked[s : s + SAMPLE_ROWS], gen, health)

    def _sample(self, logits: torch.Tensor, gen: torch.Generator, health: np.ndarray):
        """K draws per row from softmax(logits / T) over the mapped ids, folded onto data ids and counted."""
        scaled = logits.float() / self.opts.temperature
        n_map = self.fold.numel()
        lse_all = torch.logsumexp(scaled, dim=-1)
        probs = torch.softmax(scaled[:, :n_map], dim=-1)
        health[0] += float((probs @ self.dropped).sum())
        health[1] += float((1 - torch.exp(torch.logsumexp(scaled[:, :n_map], dim=-1) - lse_all)).sum())
        health[2] += len(logits)
        draws = self.fold[torch.multinomial(probs, self.opts.k, replacement=True, generator=gen)]
        return _count(draws)


def _count(draws: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids of each row of `draws` (n, K) and how often each occurs, left-aligned, count 0 after."""
    s, _ = torch.sort(draws, dim=1)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    slot = torch.cumsum(first.long(), dim=1) - 1
    out_ids = torch.zeros_like(s).scatter_(1, slot, s)
    out_counts = torch.zeros_like(s).scatter_add_(1, slot, torch.ones_like(s))
    return out_ids.cpu().numpy().astype(np.uint32), out_counts.cpu().numpy().astype(np.uint8)


def _batches(rows: list, batch_tokens: int):
    """Rows grouped so that rows x longest row stays within `batch_tokens` (longest first)."""
    rows = sorted(rows, key=lambda r: -len(r[0]))
    batch: list = []
    for row in rows:
        if batch and (len(batch) + 1) * len(batch[0][0]) > batch_tokens:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _write(folder: TokenFolder, out, store: ChunkStore, opts: TeachOptions, job: dict) -> dict:
    """The output folder: the source's documents as they were, each with its chunk's targets."""
    kind = folder.kind
    splits = {name: folder.split(name) for name in SPLITS}
    writer = TokenFolderWriter(out, kind, folder.tokenizer, with_mask=kind == "sft",
                               with_turns=all(s.turn_starts is not None for s in splits.values()), teach_k=opts.k)
    health = np.zeros(3)
    with writer:
        for name, split in splits.items():
            for c, (first, end) in enumerate(doc_chunks(split.doc_starts, opts.chunk_tokens)):
                got = store.load(f"{name}.{c:06d}")
                health += got["health"]
                _copy_docs(writer, name, split, first, end, got)
        n = max(health[2], 1.0)
        extra = {k: v for k, v in folder.meta.items() if k not in ("format_version", "kind", "tokenizer", "splits")}
        teacher = {**job["teacher"], "k": opts.k, "temperature": opts.temperature, "seed": opts.seed,
                   "context": job["context"], "source": str(folder.path), "bytes_per_token": 5 * opts.k,
                   "positions": int(health[2]), "dropped_mass_per_token": health[0] / n,
                   "outside_mass_per_token": health[1] / n}
        return writer.finish({**extra, "teacher": teacher})


def _copy_docs(writer: TokenFolderWriter, name: str, split, first: int, end: int, got: dict) -> None:
    """Documents first..end-1 with their targets; the split's byte totals ride on its last document."""
    base = int(split.doc_starts[first])
    turns = None if split.turn_starts is None else np.asarray(split.turn_starts, np.int64)
    for d in range(first, end):
        s, e = int(split.doc_starts[d]), int(split.doc_starts[d + 1])
        last = d == split.n_docs - 1
        in_doc = () if turns is None else turns[np.searchsorted(turns, s):np.searchsorted(turns, e)] - s
        writer.add(name, np.asarray(split.tokens[s:e]), None if split.mask is None else split.mask[s:e], in_doc,
                   split.stats.get("bytes", 0) if last else 0, split.stats.get("target_bytes", 0) if last else 0,
                   teach=(got["ids"][s - base : e - base], got["counts"][s - base : e - base]))


def teach_summary(meta: dict, out: Path) -> list[str]:
    t = meta["teacher"]
    return [f"{out}: teacher {t['name']} ({t['kind']}, {t['vocabulary']} ids), K={t['k']} at temperature "
            f"{t['temperature']}: {t['bytes_per_token']} bytes per token over {t['positions']:,} positions",
            f"teacher mass per token dropped by the data's vocabulary (folded): {t['dropped_mass_per_token']:.4f}; "
            f"outside the vocabulary (padding, extra specials): {t['outside_mass_per_token']:.4f}"]
