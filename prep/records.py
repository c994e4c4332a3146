"""The prep engine's vocabulary: what format readers hand to it (documents to tokenize, or records
skipped or repaired and why), and the errors prep raises.

A reader (``prep/wiki.py`` for articles, ``prep/sft.py`` for dialogs) never tokenizes. It turns raw
records into a `Document`: a list of pieces, each either text (encoded with the tokenizer's ordinary
encoding) or a special id produced by our own template, each with a "trained" flag. The pipeline
(``prep/pipeline.py``) batches the text of many documents into one tokenizer call, assembles ids and
masks, and writes them. Keeping readers tokenizer-free keeps them small, testable and fast to run
in worker processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from common.errors import Interrupted, UserError


class PrepError(UserError):
    """A one-line, user-facing reason why prep cannot produce a folder (the CLI prints it, exit code 1)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception from a library (transformers, datasets) whose messages run long."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class PrepInterrupted(PrepError, Interrupted):
    """Ctrl-C, SIGTERM or SIGHUP: the workers are stopped and the partial folder is gone."""


@dataclass(frozen=True)
class Piece:
    """Text to encode, or one special token id; `trained` marks its tokens as training targets (SFT)."""

    text: str | None = None
    special_id: int | None = None
    trained: bool = False


@dataclass
class Document:
    """One article or dialog, as pieces. The pipeline appends nothing: the reader ends it with <|endoftext|>."""

    pieces: list[Piece]
    split_key: str  # hashed (stably) to choose train or val, e.g. the article id
    dedup_key: str  # exact duplicates by this key are dropped, e.g. the normalised text
    location: str  # "file:line", for messages
    turn_starts: list[int] = field(default_factory=list)  # indices into `pieces` where a user turn begins


@dataclass(frozen=True)
class Counted:
    """A record counted by a short machine-readable reason (e.g. ``invalid_json``) at ``file:line``."""

    reason: str
    location: str


class Skipped(Counted):
    """A record that was not used."""


class Repaired(Counted):
    """Something a reader fixed and still used (a BOM stripped, a CRLF line end), counted so it is never silent."""


# Python strings may hold lone surrogates (a JSON "\\ud800" escape, common in scraped dumps), which are not
# text: they cannot be encoded, normalised reliably or tokenized. Raw bytes decoded as UTF-8 never hold one.
_SURROGATE = re.compile("[\ud800-\udfff]")
INVALID_UNICODE = "invalid_unicode"  # how such a record is counted, by every reader


def holds_invalid_text(row: object) -> bool:
    """Whether any string in a decoded row (its keys included, at any depth) holds a lone surrogate.

    Every reader of decoded rows (JSON lines, JSON arrays, Parquet, dataset rows) asks this before it
    takes text from the row, so the row is one counted ``invalid_unicode`` skip, the same in every format."""
    stack = [row]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False
