"""`prep text`: any text corpus -> pretraining token files, on the engine of `prep.pipeline`.

Inputs are read by `prep.text_sources` (JSON lines, JSON arrays, Parquet, plain text, gzip/zstd,
folders, `datasets`). From each row the text is ``fields`` joined with ``\\n`` (empty values left out),
each field a key or a dotted path into nested objects (``meta.title``). Plain-text files have no
fields: the file (or block) is the text.

A document is that text, NFC-normalised, stripped of surrounding whitespace, optionally converted to
simplified Chinese, then ``<|endoftext|>``. It is dropped, and counted by reason, when it is shorter
than ``min_chars`` characters (``too_short``) or fails a quality filter (`prep.text_filters`); a row
without a field is ``missing_field``, a field that is not a string ``non_string_field`` (the id may also
be an integer). Train/val is chosen by a stable hash of ``id_field`` when given, else of the text;
exact duplicates are the same final text; near-duplicates are `prep.near_dedup`'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from prep.jsonl import BOM
from prep.near_dedup import NearDedupConfig
from prep.pipeline import PrepJob, run_prep
from prep.records import Document, Piece, Repaired, Skipped
from prep.row_sources import chunk_rows
from prep.sources import Chunk
from prep.text_filters import QualityFilters
from prep.text_sources import DEFAULT_PATTERNS, TextSource, top_columns
from prep.tokenizer import SpecialIds, nfc
from prep.wiki import DEFAULT_MIN_CHARS, t2s_converter

Record = Document | Skipped | Repaired


@dataclass(frozen=True)
class TextOptions:
    """How a row or file becomes a document (picklable: it travels to the workers)."""

    fields: tuple[str, ...] = ("text",)
    id_field: str | None = None
    min_chars: int = DEFAULT_MIN_CHARS
    to_simplified: bool = False
    filters: QualityFilters = field(default_factory=QualityFilters)


class _BadRow(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def field_value(row: object, path: str) -> object:
    """``row[path]`` if that key exists, else the dotted path followed through nested objects; None if absent."""
    if not isinstance(row, dict):
        raise _BadRow("not_an_object")
    if path in row:
        return row[path]
    value: object = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def row_text(row: object, opts: TextOptions) -> tuple[str, str | None]:
    """(text, id or None) of one row; raises `_BadRow` with the reason it cannot be used."""
    values = [field_value(row, f) for f in opts.fields]
    if any(v is None for v in values):
        raise _BadRow("missing_field")
    if not all(isinstance(v, str) for v in values):
        raise _BadRow("non_string_field")
    doc_id = None
    if opts.id_field is not None:
        raw_id = field_value(row, opts.id_field)
        if raw_id is None:
            raise _BadRow("missing_field")
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
            raise _BadRow("non_string_field")
        doc_id = str(raw_id)
    return "\n".join(v for v in values if v), doc_id


def text_document(text: str, doc_id: str | None, location: str, specials: SpecialIds, opts: TextOptions) -> Record:
    """The document (text, <|endoftext|>), or why it is skipped."""
    text = text.strip()
    if opts.to_simplified:
        text = t2s_converter().convert(text)
    text = nfc(text)
    if len(text) < opts.min_chars:
        return Skipped("too_short", location)
    reason = opts.filters.reason(text)
    if reason is not None:
        return Skipped(reason, location)
    return Document([Piece(text=text), Piece(special_id=specials.eot_id)], split_key=text if doc_id is None else doc_id,
                    dedup_key=text, location=location)


def parse_text(chunk: Chunk, specials: SpecialIds, opts: TextOptions) -> list[Record]:
    """The pipeline's parse function for `TextSource` chunks (bind `opts` with `functools.partial`)."""
    if chunk.fmt in ("txt", "blocks", "blocks-crlf"):
        return [r if isinstance(r, Skipped) else text_document(*r, specials, opts) for r in _plain_texts(chunk)]
    out: list[Record] = []
    for location, row in chunk_rows(chunk, out):
        try:
            text, doc_id = row_text(row, opts)
        except _BadRow as e:
            out.append(Skipped(e.reason, location))
            continue
        out.append(text_document(text, doc_id, location, specials, opts))
    return out


def _plain_texts(chunk: Chunk) -> Iterator[tuple[str, None, str] | Skipped]:
    """(text, no id, location) of each document in a plain-text chunk: the whole chunk, or each block."""
    assert isinstance(chunk.data, bytes)
    data = chunk.data.removeprefix(BOM) if chunk.first_line == 1 else chunk.data
    if chunk.fmt == "txt":
        blocks = [(chunk.first_line, data)]
    else:
        blocks = list(_blocks(data, chunk.first_line))
    for line, raw in blocks:
        location = f"{chunk.name}:{line}"
        try:
            yield raw.decode("utf-8").replace("\r\n", "\n"), None, location
        except UnicodeDecodeError:
            yield Skipped("invalid_utf8", location)


def _blocks(data: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each run of non-blank lines (a line of only whitespace is blank)."""
    start, block = 0, []
    for k, line in enumerate(data.split(b"\n")):
        if line.strip():
            if not block:
                start = k
            block.append(line)
        elif block:
            yield first_line + start, b"\n".join(block)
            block = []
    if block:
        yield first_line + start, b"\n".join(block)


def text_parser(opts: TextOptions) -> partial:
    """`parse_text` with its options bound: picklable, for the pipeline's workers."""
    return partial(parse_text, opts=opts)


def run_text(input: str | Path, out: str | Path, fields: Sequence[str] = ("text",), id_field: str | None = None,
             patterns: Sequence[str] = DEFAULT_PATTERNS, txt_docs: str = "file", hub: bool = False,
             min_chars: int = DEFAULT_MIN_CHARS, to_simplified: bool = False,
             filters: QualityFilters | None = None, near_dedup: NearDedupConfig | None = None,
             tokenizer: str = "qwen2", val_fraction: float = 0.005, workers: int | None = None,
             show_progress: bool = True, chunk_bytes: int | None = None, console=None, shard=None) -> dict:
    """`prep text` as a function: returns the meta.json written to `out`."""
    filters = filters or QualityFilters()
    opts = TextOptions(tuple(fields), id_field, min_chars, to_simplified, filters)
    columns = top_columns([*fields, *([id_field] if id_field else [])])
    source = TextSource(input, patterns, txt_docs, columns, hub, chunk_bytes)
    options = {"command": "text", "input": str(input), "fields": list(fields), "id_field": id_field,
               "patterns": list(patterns), "txt_docs": txt_docs, "hub": bool(source.hub),
               "tokenizer": tokenizer, "val_fraction": val_fraction, "min_chars": min_chars,
               "to_simplified": to_simplified, "min_cjk": filters.min_cjk,
               "max_repeated_lines": filters.max_repeated_lines, "max_char_share": filters.max_char_share,
               "near_dedup": near_dedup.describe() if near_dedup else None}
    job = PrepJob(source=source, parse=text_parser(opts), out=Path(out), kind="pretrain", options=options,
                  tokenizer=tokenizer, val_fraction=val_fraction, workers=workers, title="prep text",
                  show_progress=show_progress, near_dedup=near_dedup, shard=shard)
    return run_prep(job, console)
