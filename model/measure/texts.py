"""Raw text to score: a text file, a folder of files, or JSON-lines shards (one ``{"text": ...}`` per line).

A plain text file is ONE document. A file whose first non-blank line is a JSON object is read as JSON
lines, as the wiki_zh shards are: every non-blank line must be an object with a ``"text"`` string,
and each is a document of its own. A folder is every file under it (hidden ones left out), in sorted
order, each read by that rule. Every document is NFC-normalised (what the Qwen2 tokenizer does
anyway); its bytes are the UTF-8 bytes of that text, so all models are scored on the very same
bytes. Empty documents are left out. Anything unreadable is a `TextError` naming the file and line:
a figure computed over part of the input, silently, would not be comparable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from prep.records import holds_invalid_text
from prep.tokenizer import nfc


class TextError(UserError, ValueError):
    """Text that cannot be read as documents (missing, not UTF-8, a bad JSON line)."""


@dataclass(frozen=True)
class Document:
    where: str  # file, or file:line for a JSON line
    text: str  # NFC
    raw_bytes: int  # bytes of the input it came from (for progress)

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def text_files(path: str | os.PathLike) -> list[Path]:
    """The files a TEXT argument names: itself, or every non-hidden file under a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TextError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise TextError(f"{path}: the folder holds no files")
    return files


def read_documents(path: str | os.PathLike) -> Iterator[Document]:
    """Every non-empty document of a file or folder, in a fixed order."""
    for file in text_files(path):
        yield from _file_documents(file)


def _file_documents(file: Path) -> Iterator[Document]:
    try:
        data = file.read_bytes()
    except OSError as e:
        raise TextError(f"{file}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TextError(f"{file}:{line}: not UTF-8 text") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first.lstrip().startswith("{"):
        if text.strip():
            yield Document(str(file), nfc(text), len(data))
        return
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TextError(f"{file}:{number}: not valid JSON ({e.msg}); expected one {{\"text\": ...}} object a line") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise TextError(f"{file}:{number}: expected a JSON object with a \"text\" string")
        if holds_invalid_text(record["text"]):  # a "\ud800" escape: no bytes to score
            raise TextError(f"{file}:{number}: the text holds a lone surrogate escape (\\ud800-\\udfff), not "
                            "Unicode text; fix or drop that line")
        if record["text"].strip():
            yield Document(f"{file}:{number}", nfc(record["text"]), len(line.encode("utf-8")) + 1)


def total_raw_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in text_files(path))
