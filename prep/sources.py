"""Where prep reads from: inputs cut into bounded chunks, each carrying its file name and first line number.

Part of the engine's API for readers (see `prep.pipeline`): a source lists its inputs and yields
`Chunk`s in a fixed order; a parse function receives one chunk and the tokenizer's `SpecialIds`.
`FileSource` serves every line-based format (JSON lines, WikiExtractor text); a source of parsed rows
(a JSON array, a hub dataset) builds its chunks itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from common.paths import expand_user
from prep.records import PrepError
from prep.streams import DECOMPRESS_ERRORS, STREAMED, compression, decompressed

CHUNK_BYTES = 1 << 20  # the largest chunk: big enough that per-chunk costs vanish, small enough to balance
MIN_CHUNK_BYTES = 64 << 10
# The largest record (a line, an article, a plain-text file, an array element) a reader holds, decompressed.
# A bigger one is skipped and counted (``too_large``) without ever being held whole, so memory stays flat
# whatever a file expands to (a 10 KB .zst of one endless line, a gzip bomb); 16 MiB is ~10x the longest
# Chinese Wikipedia article.
MAX_RECORD_BYTES = 16 << 20


@dataclass(frozen=True)
class SourceInput:
    """One input as meta.json and messages name it (a path relative to the input folder, or a hub name)."""

    name: str
    n_bytes: int


@dataclass(frozen=True)
class Chunk:
    """A bounded piece of one input, cut on a record boundary.

    ``data`` is raw bytes whose first line is line ``first_line`` of ``name``, or a list of
    ``(line_or_row_number, row)`` pairs. ``fmt`` is whatever the source detected for this input
    (e.g. ``jsonl`` or ``wikiextractor``). ``n_bytes`` is the input the chunk covers, for the progress
    bar. ``file_skip`` set means the input, or what is left of it, or one record too large to hold, is
    unusable (``empty_file``, ``compressed_file``, ``too_large``): the engine counts it once and never
    calls parse.
    """

    name: str
    first_line: int
    data: bytes | list[tuple[int, Any]]
    fmt: str = ""
    n_bytes: int = 0
    file_skip: str | None = None

    @property
    def skip_location(self) -> str:
        """Where a `file_skip` is counted: the file, or ``file:line`` for one record (``too_large``) or the
        damage that ends a file part way."""
        whole = self.first_line <= 1 and self.file_skip != "too_large"
        return self.name if whole else f"{self.name}:{self.first_line}"


class Source(Protocol):
    inputs: Sequence[SourceInput]

    def chunks(self) -> Iterator[Chunk]: ...


def discover_files(path: str | os.PathLike, patterns: Sequence[str], what: str) -> list[tuple[Path, str]]:
    """Input files as (path, display name): the file itself, or every match of `patterns` at any depth.

    Hidden files and folders are ignored; the order is the sorted display names, so it never depends on
    the file system. Raises `PrepError` for a missing input or a folder without matching files.
    """
    root = Path(expand_user(str(path)))
    if root.is_file():
        return [(root, root.name)]
    if not root.is_dir():
        what = "is not a regular file or a folder" if root.exists() else "no such file or folder"
        raise PrepError(f"{path}: {what}")
    found: dict[str, Path] = {}
    for pattern in [_relative_pattern(p, root) for p in patterns]:
        for p in root.rglob(pattern):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
                found[rel] = p
    if not found:
        raise PrepError(f"{path}: no {what} found (looked for {' or '.join(patterns)} at any depth)")
    return [(found[name], name) for name in sorted(found)]


def _relative_pattern(pattern: str, root: Path) -> str:
    """A --glob pattern as `Path.rglob` takes it: an absolute one inside the input folder is made relative
    to it (``/data/corpus/*.jsonl`` under ``/data/corpus``); one outside it, or one that climbs out with
    ``..``, is one line (pathlib raises NotImplementedError / ValueError for them)."""
    path = Path(expand_user(pattern))
    if path.is_absolute():
        try:
            path = path.relative_to(root.resolve())
        except ValueError:
            raise PrepError(f"--glob {pattern}: an absolute pattern must lie inside {root}; give one relative to it "
                            "(e.g. '*.jsonl' or 'sub/*.txt')") from None
    if not path.parts or ".." in path.parts:
        raise PrepError(f"--glob {pattern}: give a file pattern inside {root} (e.g. '*.jsonl'), not one that leaves it")
    return path.as_posix()


class FileSource:
    """Line-based files read in chunks of about `chunk_bytes`, each cut just after a record's last line.

    `detect(head)` names the format of a file from its first bytes; `record_end[fmt]` is the byte
    string whose line ends a record (``b"\\n"``: every line is a record; ``b"\\n</doc>"``: a record
    ends on a ``</doc>`` line). A record longer than a chunk just makes that chunk longer.
    `chunk_bytes` None picks `auto_chunk_bytes` (the same for every run on the same input).
    With `decompress`, gzip and zstd files are read through a streaming decompressor (their chunks'
    ``n_bytes`` count compressed bytes, so the progress bar ends at the file size); otherwise, and for
    bzip2 and xz, a compressed file is skipped whole as ``compressed_file``. A compressed file that is
    cut off or damaged gives its records up to the damage, then ``corrupt_compressed_file``.
    """

    def __init__(self, files: Sequence[tuple[Path, str]], detect: Callable[[bytes], str],
                 record_end: dict[str, bytes], chunk_bytes: int | None = None, decompress: bool = False):
        self.files = list(files)
        self.inputs = [SourceInput(name, p.stat().st_size) for p, name in self.files]
        self.detect = detect
        self.record_end = record_end
        self.chunk_bytes = chunk_bytes or auto_chunk_bytes(sum(i.n_bytes for i in self.inputs))
        self.decompress = decompress

    def chunks(self) -> Iterator[Chunk]:
        for (path, name), info in zip(self.files, self.inputs, strict=True):
            yield from self._file_chunks(path, name, info.n_bytes)

    def _file_chunks(self, path: Path, name: str, size: int) -> Iterator[Chunk]:
        with open(path, "rb") as raw:
            kind = compression(raw.read(8))
            if kind is not None and not (self.decompress and kind in STREAMED):
                yield Chunk(name, 1, b"", n_bytes=size, file_skip="compressed_file")
                return
            raw.seek(0)
            try:
                with decompressed(raw, kind) as f:
                    head = f.read(64 << 10)
            except DECOMPRESS_ERRORS:  # not even its start decompresses
                yield Chunk(name, 1, b"", n_bytes=size, file_skip="corrupt_compressed_file")
                return
            if not head:
                yield Chunk(name, 1, b"", n_bytes=size, file_skip="empty_file")
                return
            fmt = self.detect(head)
            raw.seek(0)
            with decompressed(raw, kind) as f:
                yield from self._cut(f, raw, name, fmt, self.record_end[fmt], size)

    def _cut(self, f: BinaryIO, raw: BinaryIO, name: str, fmt: str, marker: bytes, size: int) -> Iterator[Chunk]:
        """Chunks of stream `f` (the file `raw` itself, or its decompressed bytes), each ending on `marker`'s line.

        A record that grows past `MAX_RECORD_BYTES` is read past, not held: one ``too_large`` skip at its line.
        """
        line, carry, reported, read, oversized = 1, b"", 0, 0, None  # oversized: the line a record too large began
        while True:
            block, broken = _read(f, self.chunk_bytes)
            read += len(block)
            buf = carry + block if carry else block
            # input bytes read so far (compressed: of the file, whose buffered bytes cannot be told apart)
            at, unread = (read, 1) if f is raw else ((raw.tell() if block else size), 0)
            if oversized is not None:  # past the start of a record over the cap: drop bytes to its end
                end = _first_record_end(buf, marker) if block else len(buf)
                keep = len(marker) if block and end == 0 else len(buf) - end  # (a marker may straddle reads)
                line += buf[: len(buf) - keep].count(b"\n")
                buf = carry = buf[len(buf) - keep :]
                if block and end == 0:
                    continue
                done = at - unread * len(buf) - reported
                yield Chunk(name, oversized, b"", fmt, done, file_skip="too_large")
                reported, oversized = reported + done, None
            cut = len(buf) if not block else _last_record_end(buf, marker)
            if block and cut == 0:  # no complete record yet: read on, unless it is already too large
                carry = buf
                if len(buf) > MAX_RECORD_BYTES:
                    oversized = line
                continue
            data, carry = buf[:cut], buf[cut:]
            if data:
                done = at - unread * len(carry) - reported
                yield Chunk(name, line, data, fmt, done)
                line += data.count(b"\n")
                reported += done
            if broken:
                yield Chunk(name, line, b"", n_bytes=size - reported, file_skip="corrupt_compressed_file")
            if not block:
                return


def auto_chunk_bytes(total_bytes: int) -> int:
    """At least ~64 chunks per run, so every core stays busy to the end even on a small corpus; at most 1 MB."""
    return int(min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, total_bytes // 64)))


def _read(f: BinaryIO, n: int) -> tuple[bytes, bool]:
    """The next `n` bytes of `f` (b"" at its end), and whether the file turned out damaged there."""
    try:
        return f.read(n), False
    except DECOMPRESS_ERRORS:
        return b"", True


def _first_record_end(buf: bytes, marker: bytes) -> int:
    """Offset just past the newline that ends the first line containing `marker`, or 0 if none ends in buf."""
    p = buf.find(marker)
    if p < 0:
        return 0
    nl = buf.find(b"\n", p + len(marker) - 1 if marker.endswith(b"\n") else p + len(marker))
    return nl + 1 if nl >= 0 else 0  # (no newline after the first marker: none after a later one either)


def _last_record_end(buf: bytes, marker: bytes) -> int:
    """Offset just past the newline that ends the last line containing `marker`, or 0 if none ends in buf."""
    p = buf.rfind(marker)
    while p >= 0:
        nl = buf.find(b"\n", p + len(marker) - 1 if marker.endswith(b"\n") else p + len(marker))
        if nl >= 0:
            return nl + 1
        p = buf.rfind(marker, 0, p)
    return 0
