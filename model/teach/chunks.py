"""Resumable work: a long teacher pass keeps each finished chunk in a file, so a killed run continues.

The chunks live in ``.OUT.teach-work/`` beside the output (hidden, locked by one writer). Each chunk file is
written atomically (temporary, fsync, rename), so after kill -9 a chunk is either complete or absent. The
folder's ``job.json`` records what the chunks were computed from (source meta.json digest, teacher,
options); a rerun with anything different starts over. The final folder is built from the chunks beside
its target and swapped in (`common.outputs.OutputFolder`); then the work folder is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.outputs import atomic_file, output_lock, read_json, remove, write_json_atomic

JOB_NAME = "job.json"
CHUNK_SUFFIX = ".chunk.npz"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a (small) file: which exact source folder a job read."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class ChunkStore:
    """``with ChunkStore(out, job) as store:`` ... ``store.has(name)``, ``store.save(name, **arrays)``,
    ``store.load(name)``; `finish()` removes the work folder once the output is in place."""

    def __init__(self, out: str | os.PathLike, job: dict):
        out = Path(out)
        self.dir = out.parent / f".{out.name}.teach-work"
        self.job = job
        self._lock = output_lock(self.dir, "teacher pass")
        self.resumed = 0

    def __enter__(self) -> ChunkStore:
        self._lock.__enter__()
        try:
            self._open()
        except BaseException as e:
            self._lock.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def _open(self) -> None:
        job_path = self.dir / JOB_NAME
        if self.dir.is_dir():
            with contextlib.suppress(OSError, ValueError):
                if read_json(job_path) == self.job:
                    self.resumed = sum(1 for p in self.dir.iterdir() if p.name.endswith(CHUNK_SUFFIX))
                    return
            self._clear()  # another job's chunks: start over (only our own files are removed)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job_path, self.job)

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name.endswith(CHUNK_SUFFIX) or p.name == JOB_NAME:
                remove(p)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}{CHUNK_SUFFIX}"

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def save(self, name: str, **arrays: np.ndarray) -> None:
        with atomic_file(self.path(name), "a teacher chunk") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())

    def load(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path(name), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def finish(self) -> None:
        self._clear()
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def doc_chunks(doc_starts: np.ndarray, chunk_tokens: int) -> Iterator[tuple[int, int]]:
    """Consecutive document ranges ``(first, end)`` of about `chunk_tokens` tokens each (at least one doc)."""
    starts = np.asarray(doc_starts, np.int64)
    n_docs, first = len(starts) - 1, 0
    while first < n_docs:
        end = int(np.searchsorted(starts, starts[first] + chunk_tokens, side="right")) - 1
        end = min(max(end, first + 1), n_docs)
        yield first, end
        first = end
