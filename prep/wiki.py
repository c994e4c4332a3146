"""Readers for Chinese Wikipedia dumps: brightmart's ``wiki_zh_2019`` JSON lines and raw WikiExtractor output.

Both formats come out of WikiExtractor; the format is detected per file from its first bytes, so a
folder may mix them:

* JSON lines (brightmart ``wiki_zh/AA/wiki_00`` …, or ``WikiExtractor --json``): one object per line
  with string fields ``id``, ``title`` and ``text`` (``url`` is not used, so not checked). ``text``
  begins with the title and a blank line.
* WikiExtractor text: ``<doc id="…" url="…" title="…">`` on a line, the article's lines, then
  ``</doc>`` on a line. The article text is its lines joined with ``\\n``, which is exactly what
  brightmart's ``text`` holds, so both formats give the same documents.

A document is the article text then ``<|endoftext|>``; train/val is chosen by its ``id`` and exact
duplicates by its NFC text. Articles whose body (the text after the leading title) has fewer than
``min_chars`` characters are dropped as ``stub`` (a third of brightmart's release is title-only
stubs, and "X可以指：" disambiguation leftovers). Bad lines are handled as `prep.jsonl` describes; in
WikiExtractor files a ``<doc>`` without ``</doc>`` is ``truncated_doc`` (end of file) or
``unclosed_doc`` (a new ``<doc>`` began), a header without ``id``/``title`` is ``bad_doc_header``,
text between documents is ``text_outside_doc``, and an article with bytes that are not UTF-8 is
``invalid_utf8``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from functools import lru_cache, partial
from pathlib import Path

from prep.jsonl import BOM, json_objects
from prep.pipeline import PrepJob, run_prep
from prep.records import Document, Piece, Repaired, Skipped
from prep.sources import Chunk, FileSource, discover_files
from prep.tokenizer import SpecialIds, nfc

WIKI_PATTERNS = ("wiki_*",)
RECORD_END = {"jsonl": b"\n", "wikiextractor": b"\n</doc>"}
DEFAULT_MIN_CHARS = 10
_ATTR = re.compile(r'(\w+)="([^"]*)"')

Record = Document | Skipped | Repaired


def detect_wiki_format(head: bytes) -> str:
    """``wikiextractor`` if a ``<doc`` line comes before any ``{`` line in the file's first bytes, else ``jsonl``."""
    for raw in head.removeprefix(BOM).split(b"\n"):
        if raw.startswith(b"<doc"):
            return "wikiextractor"
        if raw.lstrip().startswith(b"{"):
            return "jsonl"
    return "jsonl"


def wiki_source(path: str | Path, chunk_bytes: int | None = None) -> FileSource:
    """Every ``wiki_*`` file under `path` at any depth (or `path` itself if it is a file), in name order."""
    files = discover_files(path, WIKI_PATTERNS, "wiki shards (files named wiki_00, wiki_01, …)")
    return FileSource(files, detect_wiki_format, RECORD_END, chunk_bytes)


@lru_cache(maxsize=1)
def t2s_converter():
    import opencc

    return opencc.OpenCC("t2s")


def article(doc_id: str, title: str, text: str, location: str, specials: SpecialIds, min_chars: int,
            to_simplified: bool) -> Record:
    """One article as a Document (text, <|endoftext|>), or Skipped("stub") if its body is too short."""
    body = text[len(title):] if title and text.startswith(title) else text
    if len(body.strip()) < min_chars:
        return Skipped("stub", location)
    if to_simplified:
        text = t2s_converter().convert(text)
    text = nfc(text)
    return Document([Piece(text=text), Piece(special_id=specials.eot_id)], split_key=doc_id, dedup_key=text,
                    location=location)


def parse_wiki(chunk: Chunk, specials: SpecialIds, min_chars: int = DEFAULT_MIN_CHARS,
               to_simplified: bool = False) -> list[Record]:
    """The pipeline's parse function for wiki chunks (bind the options with `wiki_parser`)."""
    make = partial(article, specials=specials, min_chars=min_chars, to_simplified=to_simplified)
    if chunk.fmt == "wikiextractor":
        return list(_wikiextractor_articles(chunk, make))
    return list(_jsonl_articles(chunk, make))


def wiki_parser(min_chars: int = DEFAULT_MIN_CHARS, to_simplified: bool = False):
    """`parse_wiki` with its options bound: picklable, for the pipeline's workers."""
    return partial(parse_wiki, min_chars=min_chars, to_simplified=to_simplified)


def _jsonl_articles(chunk: Chunk, make) -> Iterator[Record]:
    for item in json_objects(chunk):
        if not isinstance(item, tuple):
            yield item
            continue
        loc, obj = item
        fields = [obj.get(k) for k in ("id", "title", "text")]
        if any(v is None for v in fields):
            yield Skipped("missing_field", loc)
        elif not all(isinstance(v, str) for v in fields):
            yield Skipped("non_string_field", loc)
        else:
            yield make(*fields, loc)


def _wikiextractor_articles(chunk: Chunk, make) -> Iterator[Record]:
    """A small state machine over lines: outside a document, or inside one since its header line."""
    assert isinstance(chunk.data, bytes)
    header: dict[str, str] | None = None
    header_loc, body, bad_utf8, crlf = "", [], False, False
    for k, raw in enumerate(chunk.data.split(b"\n")):
        loc = f"{chunk.name}:{chunk.first_line + k}"
        if raw.startswith(BOM):
            yield Repaired("bom_stripped", loc)
            raw = raw[len(BOM):]
        had_cr = raw.endswith(b"\r")
        if had_cr:
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line, bad_utf8 = "", True
            if header is None:
                yield Skipped("invalid_utf8", loc)
                continue
        if line.startswith("<doc ") and line.endswith(">"):
            if header is not None:
                yield Skipped("unclosed_doc", header_loc)
            attrs = {key: html.unescape(value) for key, value in _ATTR.findall(line)}
            header, header_loc, body, bad_utf8, crlf = attrs, loc, [], False, had_cr
            continue
        if header is None:
            if line.strip():
                yield Skipped("text_outside_doc", loc)
            continue
        crlf = crlf or had_cr
        if line != "</doc>":
            body.append(line)
            continue
        if crlf:
            yield Repaired("crlf_line_end", header_loc)
        if bad_utf8:
            yield Skipped("invalid_utf8", header_loc)
        elif "id" not in header or "title" not in header:
            yield Skipped("bad_doc_header", header_loc)
        else:
            yield make(header["id"], header["title"], "\n".join(body) + "\n" if body else "", header_loc)
        header, crlf = None, False
    if header is not None:
        yield Skipped("truncated_doc", header_loc)


def run_wiki(wiki_dir: str | Path, out: str | Path, tokenizer: str = "qwen2", val_fraction: float = 0.005,
             workers: int | None = None, min_chars: int = DEFAULT_MIN_CHARS, to_simplified: bool = False,
             show_progress: bool = True, chunk_bytes: int | None = None, console=None, shard=None) -> dict:
    """`prep wiki` as a function: returns the meta.json written to `out`."""
    options = {"command": "wiki", "input": str(wiki_dir), "tokenizer": tokenizer, "val_fraction": val_fraction,
               "min_chars": min_chars, "to_simplified": to_simplified}
    job = PrepJob(source=wiki_source(wiki_dir, chunk_bytes), parse=wiki_parser(min_chars, to_simplified),
                  out=Path(out), kind="pretrain", options=options, tokenizer=tokenizer, val_fraction=val_fraction,
                  workers=workers, title="prep wiki", show_progress=show_progress, shard=shard)
    return run_prep(job, console)
