"""Where `prep text` reads from: files of JSON lines, JSON arrays, Parquet or plain text, or a `datasets` dataset.

An input is a file, a folder (every match of the glob patterns at any depth, hidden files left out,
in name order), or a dataset name ``owner/name[:config][@split]`` streamed through `datasets`. A
file's format comes from its name (``.jsonl``, ``.json``, ``.parquet``, ``.txt``, each also with
``.gz`` or ``.zst``); a name without one of these is sniffed (Parquet magic, a first ``[`` or ``{``,
else plain text). Compression is recognised by content (`prep.streams`) and stream-decompressed.

How each format reaches the workers (see `prep.pipeline`):

* JSON lines and plain text: raw bytes cut on record boundaries (`FileSource`), decoded in the workers;
* JSON arrays, Parquet and dataset rows: decoded here into ``(row number, row)`` chunks. Parquet is read
  one batch of rows at a time (never a whole file) and only the columns the fields name.

Plain text is one document per file (``txt_docs="file"``) or one per block of lines separated by
blank lines (``"blocks"``). Locations are ``file:line`` (text, JSON) or ``file:row`` (Parquet, datasets).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath

from prep.row_sources import (
    first_char,
    hub_rows,
    json_array_rows,
    json_size,
    looks_like_hub_name,
    parse_hub_spec,
    row_chunks,
    spec_inputs,
)
from prep.sources import MAX_RECORD_BYTES, Chunk, FileSource, auto_chunk_bytes
from prep.streams import COMPRESSED_SUFFIXES, DECOMPRESS_ERRORS, STREAMED, file_compression, open_input

FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}
DEFAULT_PATTERNS = tuple(f"*{ext}{z}" for ext in FORMATS for z in ("", *COMPRESSED_SUFFIXES))
TXT_DOCS = ("file", "blocks")
BLOCK_END = {"blocks": b"\n\n", "blocks-crlf": b"\n\r\n"}  # a blank line, where chunks may be cut


def file_format(path: Path, compressed: bool) -> str:
    """``jsonl``, ``json`` (array or lines: decided later), ``parquet`` or ``txt``, by name, else by content."""
    name = path.name.lower()
    for z in COMPRESSED_SUFFIXES:
        name = name.removesuffix(z)
    if PurePath(name).suffix in FORMATS:
        return FORMATS[PurePath(name).suffix]
    if not compressed:
        with open(path, "rb") as f:
            if f.read(4) == b"PAR1":
                return "parquet"
    return "json" if _first_char(path) in ("[", "{") else "txt"


def _first_char(path: Path) -> str:
    try:
        return first_char(path, decompress=True)
    except DECOMPRESS_ERRORS:
        return ""  # the damage is counted where the file is read


def top_columns(fields: Sequence[str]) -> list[str]:
    """The top-level columns a list of (dotted) fields reads: ``meta.title`` -> ``meta`` (and ``meta.title``)."""
    return sorted(set(fields) | {f.split(".", 1)[0] for f in fields})


class TextSource:
    """Chunks of every input in a fixed order, as `prep.pipeline` wants them."""

    def __init__(self, spec: str | Path, patterns: Sequence[str] = DEFAULT_PATTERNS, txt_docs: str = "file",
                 columns: Sequence[str] | None = None, hub: bool = False, chunk_bytes: int | None = None):
        self.spec = str(spec)
        self.txt_docs = txt_docs
        self.columns = list(columns) if columns is not None else None
        name, config, split = parse_hub_spec(self.spec)
        suffixes = [*FORMATS, *COMPRESSED_SUFFIXES]
        self.hub = (name, config, split) if hub or looks_like_hub_name(name, suffixes) else None
        self.files, self.inputs = spec_inputs(self.spec, self.hub is not None, patterns, "text files")
        self.chunk_bytes = chunk_bytes or auto_chunk_bytes(sum(i.n_bytes for i in self.inputs) or 1 << 40)

    def chunks(self) -> Iterator[Chunk]:
        if self.hub:
            name, config, split = self.hub
            rows = ((n, row, json_size(row)) for n, row in hub_rows(name, split, config, self.columns))
            yield from row_chunks(self.spec, rows, self.chunk_bytes, "rows")
            return
        for (path, name), info in zip(self.files, self.inputs, strict=True):
            yield from self._file_chunks(path, name, info.n_bytes)

    def _file_chunks(self, path: Path, name: str, size: int) -> Iterator[Chunk]:
        kind = file_compression(path)
        fmt = file_format(path, kind is not None) if kind in (None, *STREAMED) else "unreadable"
        if kind is not None and fmt in ("unreadable", "parquet"):  # bzip2, xz; Parquet needs random access
            yield Chunk(name, 1, b"", n_bytes=size, file_skip="compressed_file")
        elif fmt == "parquet":
            yield from parquet_chunks(path, name, size, self.columns, self.chunk_bytes)
        elif fmt == "txt" and self.txt_docs == "file":
            yield whole_file_chunk(path, name, size)
        elif fmt == "txt":
            yield from FileSource([(path, name)], _block_format, BLOCK_END, self.chunk_bytes, decompress=True).chunks()
        elif fmt == "json" and _first_char(path) == "[":
            rows = _progress_within(json_array_rows(path, decompress=True), size)
            yield from row_chunks(name, rows, self.chunk_bytes, "rows", size)
        else:  # JSON lines; FileSource also turns empty and damaged files into counted skips
            yield from FileSource([(path, name)], lambda _: "jsonl", {"jsonl": b"\n"}, self.chunk_bytes,
                                  decompress=True).chunks()


def _block_format(head: bytes) -> str:
    """Blank lines are ``\\n\\n``, or ``\\n\\r\\n`` in a file with Windows line ends."""
    return "blocks-crlf" if b"\r\n" in head else "blocks"


def _progress_within(rows: Iterator[tuple[int, object, int]], size: int) -> Iterator[tuple[int, object, int]]:
    """Rows whose byte counts never add up past `size` (a compressed file holds more text than its size)."""
    left = size
    for line, row, n_bytes in rows:
        yield line, row, min(n_bytes, left)
        left -= min(n_bytes, left)


def whole_file_chunk(path: Path, name: str, size: int) -> Chunk:
    """A plain-text file as one document (a chunk of format ``txt``)."""
    try:
        with open_input(path) as f:
            data = f.read(MAX_RECORD_BYTES + 1)  # never more: a small .gz may expand to gigabytes
    except DECOMPRESS_ERRORS:
        return Chunk(name, 1, b"", n_bytes=size, file_skip="corrupt_compressed_file")
    if len(data) > MAX_RECORD_BYTES:
        return Chunk(name, 1, b"", n_bytes=size, file_skip="too_large")
    return Chunk(name, 1, data, "txt", size) if data else Chunk(name, 1, b"", file_skip="empty_file")


def parquet_chunks(path: Path, name: str, size: int, columns: Sequence[str] | None,
                   chunk_bytes: int) -> Iterator[Chunk]:
    """Rows of a Parquet file in batches of about `chunk_bytes` (of the columns read), never the whole file.

    A file pyarrow cannot read (not Parquet, cut off, damaged) gives the rows read so far, then
    ``invalid_parquet`` for the rest. A row group whose rows hold more than `MAX_RECORD_BYTES` each on
    average once decompressed (by its footer: a small file of gigabytes) is never decoded: ``too_large``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = reported = 0
    try:
        pf = pq.ParquetFile(path)
        present = [c for c in pf.schema_arrow.names if columns is None or c in columns]
        n_rows = pf.metadata.num_rows
        if n_rows == 0:
            yield Chunk(name, 1, b"", n_bytes=size, file_skip="empty_file")
            return
        for group in range(pf.num_row_groups):
            group_rows, held = pf.metadata.row_group(group).num_rows, _uncompressed_bytes(pf, present, group)
            if held > MAX_RECORD_BYTES * max(1, group_rows):
                progress = size * (done + group_rows) // n_rows - reported
                yield Chunk(name, done + 1, b"", n_bytes=progress, file_skip="too_large")
                done, reported = done + group_rows, reported + progress
                continue
            batch_rows = max(1, chunk_bytes * group_rows // max(1, held))
            for batch in pf.iter_batches(batch_size=batch_rows, columns=present, row_groups=[group]):
                rows = batch.to_pylist() if present else [{}] * batch.num_rows
                progress = size * (done + len(rows)) // n_rows - reported
                yield Chunk(name, done + 1, list(enumerate(rows, done + 1)), "rows", progress)
                done, reported = done + len(rows), reported + progress
    except (pa.ArrowException, OSError):
        yield Chunk(name, done + 1, b"", n_bytes=size - reported, file_skip="invalid_parquet")


def _uncompressed_bytes(pf, columns: Sequence[str], group: int) -> int:
    """What the given top-level columns of row group `group` hold once decompressed, from the file's footer
    (nothing is read)."""
    rg = pf.metadata.row_group(group)
    return sum(rg.column(j).total_uncompressed_size for j in range(rg.num_columns)
               if rg.column(j).path_in_schema.split(".", 1)[0] in columns)
