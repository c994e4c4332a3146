"""JSON lines, read defensively: one object per line, every bad line skipped and counted, never fatal.

Shared by every JSON-lines reader (wiki articles, Belle dialogs). What happens to each kind of bad line:

* a UTF-8 BOM at the start of a line (a file saved by Notepad, or files concatenated with `cat`):
  stripped, the line is used, counted as repaired ``bom_stripped``;
* CRLF line ends: the ``\\r`` is dropped, the line is used, counted as repaired ``crlf_line_end``;
* a blank line: ignored, counted as repaired ``blank_line`` (it holds no record);
* bytes that are not UTF-8: skipped, ``invalid_utf8``;
* not JSON: skipped, ``invalid_json``; but a last line with no newline that is not JSON is the
  typical cut-off download: skipped as ``truncated_last_line``. A last line with no newline that IS
  valid JSON is used and counted as repaired ``no_final_newline``;
* JSON that is not an object (a list, a number): skipped, ``not_an_object``;
* a string holding a lone surrogate (a ``\\ud800`` escape): skipped, ``invalid_unicode``.

Lines are split on ``\\n`` only, as JSON lines are defined: U+2028 and friends inside strings are text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prep.records import INVALID_UNICODE, Repaired, Skipped, holds_invalid_text
from prep.sources import Chunk

BOM = b"\xef\xbb\xbf"


def json_objects(chunk: Chunk) -> Iterator[tuple[str, dict] | Skipped | Repaired]:
    """Yield ``(location, object)`` for every good line of a bytes chunk, and a Skipped/Repaired for the rest."""
    data = chunk.data
    assert isinstance(data, bytes), "json_objects reads raw byte chunks"
    lines = data.split(b"\n")
    unterminated = lines.pop() if lines else b""  # b"" when the chunk ends with a newline
    if unterminated.strip():
        lines.append(unterminated)
    else:
        unterminated = b""
    for k, raw in enumerate(lines):
        loc = f"{chunk.name}:{chunk.first_line + k}"
        if raw.startswith(BOM):
            yield Repaired("bom_stripped", loc)
            raw = raw[len(BOM):]
        if raw.endswith(b"\r"):
            yield Repaired("crlf_line_end", loc)
            raw = raw[:-1]
        if not raw.strip():
            yield Repaired("blank_line", loc)
            continue
        is_last_unterminated = bool(unterminated) and k == len(lines) - 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Skipped("invalid_utf8", loc)
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested absurdly deep
            yield Skipped("truncated_last_line" if is_last_unterminated else "invalid_json", loc)
            continue
        if is_last_unterminated:
            yield Repaired("no_final_newline", loc)
        if not isinstance(obj, dict):
            yield Skipped("not_an_object", loc)
            continue
        if holds_invalid_text(obj):
            yield Skipped(INVALID_UNICODE, loc)
            continue
        yield loc, obj
