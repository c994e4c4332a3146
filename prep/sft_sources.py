"""Where `prep sft` reads rows from: JSON-lines files, JSON-array files, folders of them, or the hub.

Files are read as a stream in every case. A JSON-lines file is handed to the pipeline as raw bytes
(cut into chunks on line boundaries) and decoded in the workers. A JSON-array file is decoded here,
one element at a time with `json.JSONDecoder.raw_decode` over a sliding buffer, so a multi-GB array
never has to fit in memory; elements keep the line they start on, for messages. A name that is not
a local path (``BelleGroup/multiturn_chat_0.8M``) is streamed through `datasets` where the hub is
reachable; where it is not, the user gets one line saying so.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

from prep.records import PrepError

INPUT_PATTERNS = ("*.json", "*.jsonl")
_READ_SIZE = 1 << 20
_MAX_ELEMENT = 256 << 20  # an array element larger than this is taken as broken JSON, not buffered forever
_WS = " \t\r\n"


def looks_like_hub_name(spec: str) -> bool:
    """``owner/name`` that is not a local path: what `datasets.load_dataset` would look up on the hub.

    A mistyped local path (``data/belle.json`` where ``data/`` exists, or any ``*.json``) stays a path,
    so its error says "no such file" rather than "cannot reach the hub".
    """
    path = Path(spec)
    return (spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not path.exists()
            and not path.parent.exists() and path.suffix not in (".json", ".jsonl"))


def first_char(path: Path) -> str:
    """The first non-whitespace character of a file (after a UTF-8 BOM), or "" for an empty one."""
    with open(path, "rb") as f:
        head = f.read(4096)
        while head and not head.lstrip(b" \t\r\n\xef\xbb\xbf"):
            more = f.read(4096)
            if not more:
                return ""
            head = more
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return chr(stripped[0]) if stripped else ""


def is_json_array(path: Path) -> bool:
    return first_char(path) == "["


def iter_json_array(path: Path) -> Iterator[tuple[int, object, int]]:
    """Yield ``(line, element, n_bytes)`` for each element of a top-level JSON array, streaming the file.

    `n_bytes` is the UTF-8 size of the element's JSON text (for progress); `line` is where it starts.
    """
    with open(path, encoding="utf-8-sig") as f:
        yield from _ArrayReader(f, path).elements()


class _ArrayReader:
    """A top-level JSON array read element by element through a buffer of about one read."""

    def __init__(self, f, path: Path):
        self.f, self.path, self.decoder = f, path, json.JSONDecoder()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.refill()

    def fail(self, message: str, line: int | None = None) -> PrepError:
        return PrepError(f"{self.path}:{self.line if line is None else line}: {message}")

    def refill(self) -> bool:
        """Append the next read to what is left of the buffer; False at the end of the file."""
        try:
            more = self.f.read(_READ_SIZE)
        except UnicodeDecodeError as e:
            raise self.fail(f"not UTF-8 text ({e.reason})") from e
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
                # Maybe only cut off by the buffer: read more and retry, up to a sane element size.
                if not self.eof and len(self.buf) - self.pos < _MAX_ELEMENT and self.refill():
                    continue
                line = self.line + self.buf.count("\n", self.pos, e.pos)
                raise self.fail(f"invalid JSON in the array ({e.msg})", line) from e
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


def hub_rows(name: str, split: str = "train") -> Iterator[tuple[int, object]]:
    """Stream ``(row number, row)`` from a `datasets` dataset: a hub name, or a local folder `datasets` can load."""
    try:
        import datasets
        import huggingface_hub

        datasets.logging.set_verbosity_error()  # our one-line error says it all; no retry chatter
        huggingface_hub.utils.logging.set_verbosity_error()
        dataset = datasets.load_dataset(name, split=split, streaming=True)
        rows = iter(dataset)
        first = next(rows, None)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load"
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        raise PrepError(f"{name}: cannot load this dataset through `datasets`{hint}: {text}") from e
    if first is None:
        return
    yield from enumerate(itertools.chain([first], rows), 1)
