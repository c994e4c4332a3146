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

INPUT_PATTERNS = ("*.json", "*.jsonl")
_READ_SIZE = 1 << 20
_MAX_ELEMENT = 256 << 20  # an array element larger than this is taken as broken JSON, not buffered forever
_WS = " \t\r\n"


class SourceError(ValueError):
    """An input that cannot be read at all; the message is one line naming it."""


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
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig") as f:
        try:
            buf, pos, line, eof = f.read(_READ_SIZE), 0, 1, False
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: not UTF-8 text ({e.reason})") from e

        def skip(chars: str) -> None:
            nonlocal pos, line
            while pos < len(buf) and buf[pos] in chars:
                line += buf[pos] == "\n"
                pos += 1

        def refill() -> bool:
            nonlocal buf, pos, eof
            try:
                more = f.read(_READ_SIZE)
            except UnicodeDecodeError as e:
                raise SourceError(f"{path}:{line}: not UTF-8 text ({e.reason})") from e
            eof = not more
            buf, pos = buf[pos:] + more, 0
            return not eof

        skip(_WS)
        if buf[pos : pos + 1] != "[":
            raise SourceError(f"{path}:{line}: expected a JSON array starting with '['")
        pos += 1
        expect_comma = False
        while True:
            skip(_WS)
            if pos >= len(buf):
                if refill():
                    continue
                raise SourceError(f"{path}:{line}: the JSON array is not closed with ']' (a truncated file?)")
            if buf[pos] == "]":
                pos += 1
                skip(_WS)
                while pos >= len(buf) and refill():
                    skip(_WS)
                if pos < len(buf):
                    raise SourceError(f"{path}:{line}: unexpected text after the JSON array")
                return
            if expect_comma:
                if buf[pos] != ",":
                    raise SourceError(f"{path}:{line}: expected ',' or ']' between array elements")
                pos += 1
                expect_comma = False
                continue
            try:
                element, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                # Maybe only cut off by the buffer: read more and retry, up to a sane element size.
                if not eof and len(buf) - pos < _MAX_ELEMENT and refill():
                    continue
                raise SourceError(f"{path}:{line + buf.count(chr(10), pos, e.pos)}: invalid JSON in the array ({e.msg})") from e
            if end == len(buf) and not eof:  # a number may continue past the buffer; make sure
                refill()
                continue
            yield line, element, len(buf[pos:end].encode("utf-8", "surrogatepass"))
            line += buf.count("\n", pos, end)
            pos = end
            expect_comma = True
            if pos > _READ_SIZE:  # drop what is consumed so the buffer stays about one read long
                buf, pos = buf[pos:], 0


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
        raise SourceError(f"{name}: cannot load this dataset through `datasets`{hint}: {text}") from e
    if first is None:
        return
    yield from enumerate(itertools.chain([first], rows), 1)
