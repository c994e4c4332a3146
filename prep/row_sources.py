"""Rows that are decoded in the main process: JSON-array files and `datasets` (hub) rows, grouped into chunks.

Shared by `prep sft` and `prep text`. Files are read as a stream in every case (a JSON-lines file
is not read here: it goes to the pipeline as raw bytes and is decoded in the workers). A JSON-array
file is decoded here,
one element at a time with `json.JSONDecoder.raw_decode` over a sliding buffer, so a multi-GB array
never has to fit in memory; elements keep the line they start on, for messages. A name that is not
a local path (``BelleGroup/multiturn_chat_0.8M``) is streamed through `datasets` where the hub is
reachable; where it is not, the user gets one line saying so.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.paths import looks_like_hub_name  # noqa: F401 - re-exported: the readers' import
from prep.jsonl import json_objects
from prep.records import INVALID_UNICODE, PrepError, Repaired, Skipped, first_line, holds_invalid_text
from prep.sources import MAX_RECORD_BYTES, Chunk, SourceInput, discover_files
from prep.streams import DECOMPRESS_ERRORS, open_input

_READ_SIZE = 1 << 20
_WS = " \t\r\n"


def _open(path: Path, decompress: bool) -> AbstractContextManager[BinaryIO]:
    return open_input(path) if decompress else open(path, "rb")


def first_char(path: Path, decompress: bool = False) -> str:
    """The first non-whitespace character of a file (after a UTF-8 BOM), or "" for an empty one.

    With `decompress`, of a gzip or zstd file's content (see `prep.streams`)."""
    with _open(path, decompress) as f:
        head, seen = f.read(4096), 0
        while head and not head.lstrip(b" \t\r\n\xef\xbb\xbf"):
            more, seen = f.read(4096), seen + len(head)
            if not more or seen > MAX_RECORD_BYTES:  # (a bomb of whitespace is not read to its end)
                return ""
            head = more
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return chr(stripped[0]) if stripped else ""


def is_json_array(path: Path, decompress: bool = False) -> bool:
    return first_char(path, decompress) == "["


def iter_json_array(path: Path, decompress: bool = False) -> Iterator[tuple[int, object, int]]:
    """Yield ``(line, element, n_bytes)`` for each element of a top-level JSON array, streaming the file.

    `n_bytes` is the UTF-8 size of the element's JSON text (for progress); `line` is where it starts.
    With `decompress`, a gzip or zstd file is read through a streaming decompressor.
    """
    with _open(path, decompress) as binary, io.TextIOWrapper(binary, encoding="utf-8-sig") as f:
        yield from _ArrayReader(f, path).elements()


class _ArrayReader:
    """A top-level JSON array read element by element through a buffer of about one read."""

    def __init__(self, f, path: Path):
        self.f, self.path, self.decoder = f, path, json.JSONDecoder()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.refill()

    def fail(self, message: str, line: int | None = None, reason: str = "invalid_json") -> DamagedInput:
        line = self.line if line is None else line
        return DamagedInput(f"{self.path}:{line}: {message}", reason, line)

    def refill(self) -> bool:
        """Append the next read to what is left of the buffer; False at the end of the file."""
        try:
            more = self.f.read(_READ_SIZE)
        except UnicodeDecodeError as e:
            raise self.fail(f"not UTF-8 text ({e.reason})", reason="invalid_utf8") from e
        except DECOMPRESS_ERRORS as e:
            raise self.fail(f"the compressed file is damaged or cut off ({e})", reason="corrupt_compressed_file") from e
        self.eof = not more
        self.buf, self.pos = self.buf[self.pos :] + more, 0
        return not self.eof

    def next_char(self) -> str:
        """The next non-whitespace character, reading on as needed ("" at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.line += self.buf[self.pos] == "\n"
                self.pos += 1
            if self.pos < len(self.buf) or not self.refill():
                return self.buf[self.pos : self.pos + 1]

    def elements(self) -> Iterator[tuple[int, object, int]]:
        if self.next_char() != "[":
            raise self.fail("expected a JSON array starting with '['")
        self.pos += 1
        expect_comma = False
        while True:
            c = self.next_char()
            if c == "":
                raise self.fail("the JSON array is not closed with ']' (a truncated file?)")
            if c == "]":
                self.pos += 1
                if self.next_char():
                    raise self.fail("unexpected text after the JSON array")
                return
            if expect_comma:
                if c != ",":
                    raise self.fail("expected ',' or ']' between array elements")
                self.pos += 1
                expect_comma = False
                continue
            yield self.element()
            expect_comma = True

    def element(self) -> tuple[int, object, int]:
        while True:
            try:
                element, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # Maybe only cut off by the buffer: read more and decode again, up to a sane element size
                # (at the end of the file, again all the same, so that e.pos is a position in this buffer).
                if not self.eof and len(self.buf) - self.pos < MAX_RECORD_BYTES:
                    self.refill()
                    continue
                line = self.line + self.buf.count("\n", self.pos, e.pos)
                if not self.eof:  # still no end to it after MAX_RECORD_BYTES: read past it, never held whole
                    return self.skip_element()
                raise self.fail(f"invalid JSON in the array ({e.msg})", line) from e
            except RecursionError:
                raise self.fail("an array element is nested too deeply to be a record") from None
            if end == len(self.buf) and not self.eof:  # a number may continue past the buffer; make sure
                self.refill()
                continue
            n_bytes = len(self.buf[self.pos : end].encode("utf-8", "surrogatepass"))
            line = self.line
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            if self.pos > _READ_SIZE:  # drop what is consumed so the buffer stays about one read long
                self.buf, self.pos = self.buf[self.pos :], 0
            return line, element, n_bytes


    def skip_element(self) -> tuple[int, TooLarge, int]:
        """Read past the element starting at `pos` (over the size cap), holding one read at a time: its
        end is found by following strings, escapes and brackets, not by decoding it."""
        line, n_bytes = self.line, 0
        depth, in_string = 0, False
        while True:
            if self.pos >= len(self.buf):  # all of this read is inside the element: drop it, read on
                over = self.pos - len(self.buf)  # (an escaped character split from its backslash by the read)
                n_bytes += self.drop(len(self.buf))
                if not self.refill():
                    raise self.fail(f"the JSON array ends inside an element over {MAX_RECORD_BYTES >> 20} MiB",
                                    line, reason="too_large")
                self.pos = over
                continue
            m = (_STRING_STOP if in_string else _VALUE_STOP).search(self.buf, self.pos)
            if m is None:
                self.pos = len(self.buf)
                continue
            c = m.group()
            if in_string:
                self.pos = m.end() + (c == "\\")  # a backslash escapes the next character
                in_string = c != '"'
                if not in_string and depth == 0:  # the element was one long string
                    break
            elif depth == 0 and c in ",]":  # the element was a scalar: it ends before this
                self.pos = m.start()
                break
            else:
                self.pos, in_string = m.end(), c == '"'
                depth += (c in "[{") - (c in "]}")
                if depth <= 0 and c in "]}":
                    break
        return line, TooLarge(line), n_bytes + self.drop(self.pos)

    def drop(self, end: int) -> int:
        """Forget the buffer up to `end` (counting its lines); its size in UTF-8 bytes."""
        gone = self.buf[:end]
        self.line += gone.count("\n")
        self.buf, self.pos = self.buf[end:], self.pos - end
        return len(gone.encode("utf-8", "surrogatepass"))


_STRING_STOP = re.compile(r'["\\]')  # inside a string: its end, or an escape
_VALUE_STOP = re.compile(r'["\[\]{},]')  # outside strings: what opens or closes a value


@dataclass(frozen=True)
class TooLarge:
    """In place of a row: an array element over the size cap, read past and counted ``too_large`` at `line`."""

    line: int


class DamagedInput(PrepError):
    """A file that cannot be read past some point (`line`); `reason` is how the rest of it is counted."""

    def __init__(self, message: str, reason: str, line: int):
        super().__init__(message)
        self.reason, self.line = reason, line


@dataclass(frozen=True)
class Damaged:
    """In place of a row: the rest of the file is unusable from `line` on, counted as `reason`."""

    reason: str
    line: int


def json_array_rows(path: Path, decompress: bool = False) -> Iterator[tuple[int, object, int]]:
    """`iter_json_array` for a prep run: damage (a cut-off file, bad JSON, an element over the size cap)
    ends the rows with one `Damaged` row instead of stopping the run, as every other format does."""
    try:
        yield from iter_json_array(path, decompress)
    except DamagedInput as e:
        yield e.line, Damaged(e.reason, e.line), 0


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """``name[:config][@split]`` -> (name, config or None, split; ``train`` by default).

    Only the last path component is searched for ``:`` and ``@``, so a folder path with either in a
    parent folder's name stays whole.
    """
    head, sep, last = spec.rpartition("/")
    last, at, split = last.partition("@")
    last, colon, config = last.partition(":")
    return head + sep + last, (config or None) if colon else None, (split or "train") if at else "train"


def hub_rows(name: str, split: str = "train", config: str | None = None,
             columns: Sequence[str] | None = None) -> Iterator[tuple[int, object]]:
    """Stream ``(row number, row)`` from a `datasets` dataset: a hub name, or a local folder `datasets` can load.

    `columns`, if given, are the only ones read (those the dataset has; the rest of each row is never decoded).
    """
    label = name + (f":{config}" if config else "") + (f"@{split}" if split != "train" else "")
    try:
        import datasets
        import huggingface_hub

        datasets.logging.set_verbosity_error()  # our one-line error says it all; no retry chatter
        huggingface_hub.utils.logging.set_verbosity_error()
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
        if columns is not None and dataset.column_names is not None:
            dataset = dataset.select_columns([c for c in dataset.column_names if c in columns])
        rows = iter(dataset)
        first = next(rows, None)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load"
        text = first_line(e)
        hint = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        raise PrepError(f"{label}: cannot load this dataset through `datasets`{hint}: {text}") from e
    if first is None:
        return
    yield from enumerate(itertools.chain([first], rows), 1)


def spec_inputs(spec: str, hub: bool, patterns: Sequence[str], what: str
                ) -> tuple[list[tuple[Path, str]], list[SourceInput]]:
    """(files, inputs) of an input spec: a dataset (no files; one input of unknown size), or the files found."""
    if hub:
        return [], [SourceInput(spec, 0)]  # size unknown until streamed
    files = discover_files(spec, patterns, what)
    return files, [SourceInput(name, p.stat().st_size) for p, name in files]


def chunk_rows(chunk: Chunk, out: list[Skipped | Repaired]) -> Iterator[tuple[str, object]]:
    """``(location, row)`` of every row of a chunk: JSON lines decoded here, or rows decoded by the source.

    JSON lines that are not rows (bad or repaired, see `prep.jsonl`), and rows holding text that is not
    Unicode (`holds_invalid_text`, checked in `prep.jsonl` for JSON lines), go to `out` instead.
    """
    if not isinstance(chunk.data, bytes):
        for n, row in chunk.data:
            if holds_invalid_text(row):
                out.append(Skipped(INVALID_UNICODE, f"{chunk.name}:{n}"))
            else:
                yield f"{chunk.name}:{n}", row
        return
    for item in json_objects(chunk):
        if isinstance(item, tuple):
            yield item
        else:
            out.append(item)


def json_size(row: object) -> int:
    """UTF-8 bytes of a row as JSON: how a hub row counts on the progress bar."""
    return len(json.dumps(row, ensure_ascii=False, default=str).encode())


def row_chunks(name: str, rows: Iterator[tuple[int, object, int]], chunk_bytes: int, fmt: str = "",
               file_bytes: int = 0) -> Iterator[Chunk]:
    """Group ``(line, row, n_bytes)`` into chunks of about `chunk_bytes` rows of format `fmt`.

    The last chunk also accounts for what lies between rows (brackets, commas), so progress ends at `file_bytes`.
    """
    batch: list[tuple[int, object]] = []
    size = done = 0
    for line, row, n_bytes in rows:
        if isinstance(row, Damaged):  # the rows read so far, then the rest of the file as one skip
            if batch:
                yield Chunk(name, batch[0][0], batch, fmt, size)
            yield Chunk(name, row.line, b"", fmt, max(0, file_bytes - done - size), file_skip=row.reason)
            return
        if isinstance(row, TooLarge):  # the rows read so far, then this one as one skip, then the rest
            if batch:
                yield Chunk(name, batch[0][0], batch, fmt, size)
            yield Chunk(name, row.line, b"", fmt, n_bytes, file_skip="too_large")
            batch, done, size = [], done + size + n_bytes, 0
            continue
        batch.append((line, row))
        size += n_bytes
        if size >= chunk_bytes:
            yield Chunk(name, batch[0][0], batch, fmt, size)
            batch, done, size = [], done + size, 0
    if batch:
        yield Chunk(name, batch[0][0], batch, fmt, max(size, file_bytes - done))
