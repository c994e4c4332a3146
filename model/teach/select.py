"""``python -m model select``: keep the documents a teacher finds easy and a small reference model hard.

MiniPLM's difference sampling (Gu et al., ICLR 2025): score each document by its mean log-likelihood per
UTF-8 byte under the teacher minus under the reference model, and keep the top share. Per byte, so the two
models may tokenize differently (each encodes the document's text itself, as ``model bpb`` does; a long
document is scored in windows of its context, half a context apart). Documents the reference already
predicts as well as the teacher (boilerplate, lists) score low; those the teacher knows and a small model
does not score high.

The source folder is never changed. The output is a token folder of the kept documents (in their source
order; the val split is copied whole unless selected too, so validation stays comparable) whose meta.json
records the selection, and ``{split}.doc_scores.bin`` holds every source document's two figures, so a
selection with another KEEP reads them back (``--scores``) instead of running the models again. Ties in the
score break by document order: the same inputs keep the same documents.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from common.progress import bar
from model.measure.bpb import ScoredModel, windows
from model.scoring import score_rows
from model.teach.chunks import ChunkStore, doc_chunks, file_digest
from model.teach.teacher import TeacherError, load_model, load_teacher
from prep.tokenfile import META_NAME, SPLITS, Split, TokenFolder, TokenFolderWriter, open_token_folder
from prep.tokenizer import Tokenizer, recorded_tokenizer

SELECTABLE = ("pretrain",)
CHUNK_DOCS = 256  # documents per resumable chunk


def doc_text(split: Split, d: int, tok: Tokenizer) -> str:
    """Document `d`'s text: its ids without the special tokens, decoded."""
    specials = set(tok.special_tokens.values())
    return tok.decode([i for i in split.doc(d).tolist() if i not in specials])


def log_likelihood_per_byte(model: ScoredModel, texts: Sequence[str], batch_size: int, context: int) -> np.ndarray:
    """Mean log-likelihood (nats) per UTF-8 byte of each text under `model` (NaN for an empty text)."""
    rows, owner = [], []
    for k, text in enumerate(texts):
        for row in windows(model.encode(text), model.start_id, context, max(1, context // 2)):
            rows.append(row)
            owner.append(k)
    sums = np.zeros(len(texts))
    for k, (lp, _) in zip(owner, score_rows(model.backend, rows, batch_size), strict=True):
        sums[k] += lp
    n_bytes = np.array([len(t.encode()) for t in texts], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_bytes > 0, sums / n_bytes, np.nan)


def score_folder(folder: TokenFolder, out, splits: Sequence[str], teacher_spec: str, ref_spec: str,
                 batch_size: int, context: int | None, device: str, dtype: str, then: Callable[[dict], dict],
                 console=None) -> tuple[dict, dict[str, np.ndarray]]:
    """[D, 2] per split: each document's log-likelihood per byte under the teacher and the reference, and what
    `then(scores)` returns (the finished chunks are removed only after it: a kill while writing loses nothing)."""
    tok = recorded_tokenizer(folder.tokenizer, str(folder.path))
    teacher = load_teacher(teacher_spec, tok, device, dtype)
    ref, _ = load_model(ref_spec, device, dtype)
    ctx = {m.name: min(context or min(m.context, 1024), m.context) for m in (teacher.scored, ref)}
    job = {"source": file_digest(folder.path / META_NAME), "teacher": teacher.record, "reference": ref.name,
           "contexts": list(ctx.values()), "splits": list(splits)}
    scores = {}
    with ChunkStore(out, job) as store:
        total = sum(folder.split(s).n_docs for s in splits)
        with bar(console, "scoring documents", total, "docs") as advance:
            for name in splits:
                split, parts = folder.split(name), []
                for first, end in doc_chunks(np.arange(split.n_docs + 1), CHUNK_DOCS):
                    key = f"{name}.{first:09d}"
                    if not store.has(key):
                        texts = [doc_text(split, d, tok) for d in range(first, end)]
                        both = [log_likelihood_per_byte(m, texts, batch_size, ctx[m.name]) for m in (teacher.scored, ref)]
                        store.save(key, scores=np.stack(both, axis=1))
                    parts.append(store.load(key)["scores"])
                    advance(end - first)
                scores[name] = np.concatenate(parts) if parts else np.zeros((0, 2))
        result = then(scores)
        store.finish()
    return result, scores


def reuse_scores(folder: TokenFolder, scores_from: str | os.PathLike, splits: Sequence[str]) -> tuple[dict, dict]:
    """The scores a previous selection of the same source stored, and its record (one line if they differ)."""
    prev = open_token_folder(scores_from)
    record = prev.meta.get("selection")
    if not isinstance(record, dict) or record.get("source_meta") != file_digest(folder.path / META_NAME):
        raise TeacherError(f"{prev.path}: not a selection of {folder.path} as it is now (its scores are another "
                           "folder's); score again with --teacher and --ref")
    scores = {}
    for name in splits:
        got = prev.doc_scores(name)
        if got is None or len(got) != folder.split(name).n_docs:
            raise TeacherError(f"{prev.path}: holds no scores of split {name!r}; score again with --teacher and --ref")
        scores[name] = np.array(got)
    return scores, record


def kept_docs(scores: np.ndarray, keep: float) -> np.ndarray:
    """Indices of the top `keep` share by teacher minus reference (NaN last, ties by order), ascending."""
    diff = scores[:, 0] - scores[:, 1]
    diff = np.where(np.isnan(diff), -np.inf, diff)
    n_keep = int(round(keep * len(diff)))
    order = np.lexsort((np.arange(len(diff)), -diff))
    return np.sort(order[:n_keep])


def select(data, out, keep: float, teacher: str | None = None, ref: str | None = None, scores_from=None,
           splits: Sequence[str] = ("train",), batch_size: int = 8, context: int | None = None,
           device: str = "auto", dtype: str = "auto", console=None) -> tuple[dict, dict]:
    """Write the selection `out` of `data`; returns (its meta.json, the scores by split)."""
    if not 0 < keep <= 1 or math.isnan(keep):
        raise TeacherError(f"KEEP={keep}: a share of the documents, above 0 and at most 1")
    folder = open_token_folder(data)
    if folder.kind not in SELECTABLE:
        raise TeacherError(f"{folder.path}: a {folder.kind!r} token folder; selection takes pretraining ones")
    if scores_from is not None:
        scores, previous = reuse_scores(folder, scores_from, splits)
        models = {"teacher": previous.get("teacher"), "reference": previous.get("reference")}
        return _write(folder, out, keep, scores, models), scores
    if not (teacher and ref):
        raise TeacherError("give --teacher and --ref to score the documents, or --scores with an earlier selection")
    models = {"teacher": teacher, "reference": ref}
    return score_folder(folder, out, splits, teacher, ref, batch_size, context, device, dtype,
                        lambda scores: _write(folder, out, keep, scores, models), console)


def _write(folder: TokenFolder, out, keep: float, scores: dict, models: dict) -> dict:
    tok = recorded_tokenizer(folder.tokenizer, str(folder.path))
    kept = {name: kept_docs(s, keep) for name, s in scores.items()}
    writer = TokenFolderWriter(out, folder.kind, folder.tokenizer)
    with writer:
        for name in SPLITS:
            split = folder.split(name)
            if name not in kept:  # not selected: copied whole, its byte total as it was
                for d in range(split.n_docs):
                    writer.add(name, split.doc(d), n_bytes=split.stats.get("bytes", 0) if d == split.n_docs - 1 else 0)
                continue
            for d in kept[name].tolist():
                writer.add(name, split.doc(d), n_bytes=len(doc_text(split, d, tok).encode()))
            writer.add_doc_scores(name, scores[name])
        # a source's teacher targets are not carried over (only its tokens are), so neither is its record of them
        extra = {k: v for k, v in folder.meta.items()
                 if k not in ("format_version", "kind", "tokenizer", "splits", "teacher", "selection")}
        record = {**models, "keep": keep, "source": str(folder.path), "source_meta": file_digest(folder.path / META_NAME),
                  "score": "log-likelihood per byte: teacher minus reference",
                  "kept_docs": {n: len(k) for n, k in kept.items()},
                  "source_docs": {n: len(s) for n, s in scores.items()}}
        return writer.finish({**extra, "selection": record})


def selection_summary(scores: dict, folder_path, tok: Tokenizer, source: TokenFolder, keep: float,
                      examples: int = 3, width: int = 80) -> list[str]:
    """The score distribution and the top and bottom documents (decoded, cut to `width` characters)."""
    lines = []
    for name, s in scores.items():
        diff = s[:, 0] - s[:, 1]
        ok = diff[~np.isnan(diff)]
        if not len(ok):
            continue
        q = np.percentile(ok, [0, 10, 25, 50, 75, 90, 100])
        lines.append(f"{name}: {len(diff):,} documents, score (teacher - reference, nats/byte) min {q[0]:.3f}  "
                     f"p10 {q[1]:.3f}  p25 {q[2]:.3f}  median {q[3]:.3f}  p75 {q[4]:.3f}  p90 {q[5]:.3f}  max {q[6]:.3f}; "
                     f"kept {int(round(keep * len(diff))):,} (teacher {np.nanmean(s[:, 0]):.3f}, "
                     f"reference {np.nanmean(s[:, 1]):.3f} nats/byte on average)")
        order = np.lexsort((np.arange(len(diff)), -np.where(np.isnan(diff), -np.inf, diff)))
        split = source.split(name)
        for label, picks in (("top", order[:examples]), ("bottom", order[::-1][:examples])):
            for d in picks.tolist():
                text = doc_text(split, d, tok).replace("\n", " ")
                lines.append(f"  {label} {diff[d]:+.3f}  doc {d}: {text[:width]}{'…' if len(text) > width else ''}")
    lines.append(f"wrote {folder_path}")
    return lines
