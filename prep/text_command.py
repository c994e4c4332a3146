"""The ``python -m prep text`` command (registered in `prep.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import FiniteFloat, UserPath, one_line_errors
from prep.cli_common import prep_options
from prep.text_sources import DEFAULT_PATTERNS, TXT_DOCS
from prep.wiki import DEFAULT_MIN_CHARS

SHARE = FiniteFloat(0.0, 1.0)


def split_fields(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--field title --field text`` and ``--field title,text`` mean the same."""
    return tuple(part.strip() for v in values for part in v.split(",") if part.strip())


@click.command()
@click.argument("input_spec", metavar="SRC")
@click.option("--out", type=UserPath(), default=Path("data_bin/text"), show_default=True,
              help="Token folder to write (replaced only when the new one is complete).")
@prep_options
@click.option("--field", "fields", multiple=True, default=("text",), show_default=True, metavar="PATH",
              help="The text of a row: a key, or a dotted path into nested objects (meta.title). Repeat it or "
              "give a comma list to join several fields with a newline (--field title,text).")
@click.option("--id-field", default=None, metavar="PATH", help="Choose train/val by this field (a string or "
              "integer) instead of by the text itself.")
@click.option("--glob", "patterns", multiple=True, metavar="PATTERN",
              help="Files a folder SRC is searched for at any depth (repeatable; default: *.jsonl, *.json, "
              "*.parquet, *.txt, each also .gz and .zst).")
@click.option("--txt-docs", type=click.Choice(TXT_DOCS), default="file", show_default=True,
              help="Plain text: one document per file (read whole), or one per block of lines separated by a "
              "blank line (streamed).")
@click.option("--hub", is_flag=True, help="Read SRC through `datasets` even though it is a local folder "
              "(a clone of a dataset repository, with its README configs and splits).")
@click.option("--min-chars", type=click.IntRange(min=0), default=DEFAULT_MIN_CHARS, show_default=True,
              help="Drop documents with fewer characters (too_short).")
@click.option("--to-simplified", is_flag=True, help="Convert traditional to simplified Chinese (OpenCC t2s).")
@click.option("--min-cjk", type=SHARE, default=None, metavar="SHARE",
              help="Drop documents whose share of CJK ideographs (of non-space characters) is lower (low_cjk). "
              "Wikipedia: median 0.79; try 0.3.")
@click.option("--max-repeated-lines", type=SHARE, default=None, metavar="SHARE",
              help="Drop documents whose share of lines repeating an earlier line is higher (repeated_lines).")
@click.option("--max-char-share", type=SHARE, default=None, metavar="SHARE",
              help="Drop documents whose most frequent character's share is higher (repeated_char); "
              "Wikipedia: median 0.05; try 0.2.")
@click.option("--near-dedup", is_flag=True, help="Drop near-duplicates: MinHash (128 slots) + LSH over character "
              "5-grams, across all inputs; the first of similar documents is kept. Main-process memory per million "
              "kept documents: 3.3 GB at --threshold 0.8-0.9, 2.0 GB at 0.95, 4.6 GB at 0.6-0.75, ~6.3 GB below.")
@click.option("--threshold", type=FiniteFloat(0.5, 1.0, max_open=True), default=0.8, show_default=True,
              help="--near-dedup: estimated Jaccard similarity of 5-gram sets at which a document is a duplicate.")
@one_line_errors
def text(input_spec: str, out: Path, tokenizer: str, recipe: str, vocab_size: int | None, val_fraction: float,
         workers: int | None, shard,
         fields: tuple[str, ...], id_field: str | None, patterns: tuple[str, ...], txt_docs: str, hub: bool,
         min_chars: int, to_simplified: bool, min_cjk: float | None, max_repeated_lines: float | None,
         max_char_share: float | None, near_dedup: bool, threshold: float) -> None:
    """Tokenize any text corpus for pretraining: one document per row or file, <|endoftext|> after each.

    \b
    SRC is a file, a folder, or a dataset name streamed through `datasets` (needs the hub):
      name[:config][@split], e.g. opencsg/chinese-fineweb-edu  or  owner/name:zh@train (default split: train).
    Formats, by file name (a name without a known one is sniffed):
      .jsonl  JSON lines    .json  a JSON array (or JSON lines)    .parquet  Parquet, read in row batches
      .txt    plain text (--txt-docs)    any of these + .gz or .zst: decompressed as a stream
    A row's text is --field (default: text).

    \b
    Writes OUT/{train,val}.bin, .idx and meta.json, as `prep wiki` does, and with the same guarantees:
    the same bytes for any --workers, nothing left behind by Ctrl-C or an error. Bad input never stops
    the run; each case is counted in meta.json with file:line (or file:row) examples:
      skipped:  invalid_json, invalid_utf8, invalid_unicode, not_an_object, missing_field, non_string_field,
                truncated_last_line, too_short, low_cjk, repeated_lines, repeated_char, duplicate (same text),
                near_duplicate, empty_file, compressed_file (bzip2, xz, or compressed Parquet),
                corrupt_compressed_file, invalid_parquet, too_large (a record over 16 MiB, never held whole)
      repaired: bom_stripped, crlf_line_end, no_final_newline, blank_line
    A damaged file (cut off, corrupt, bad JSON in an array) gives its rows up to the damage, then the
    rest is counted once at its file:line (corrupt_compressed_file, invalid_json, ...). With --near-dedup, meta.json
    also gets near_dedup: counts, parameters and a few (removed, kept) location pairs.
    """
    from prep.near_dedup import NearDedupConfig
    from prep.recipe_vocab import recipe_tokenizer
    from prep.text import run_text
    from prep.text_filters import QualityFilters

    fields = split_fields(fields)
    if not fields:
        raise click.UsageError("--field needs at least one field name")

    def run(folder: Path, tokenizer: str, shard=None) -> dict:
        return run_text(input_spec, folder, fields=fields, id_field=id_field, patterns=patterns or DEFAULT_PATTERNS,
                        txt_docs=txt_docs, hub=hub, min_chars=min_chars, to_simplified=to_simplified,
                        filters=QualityFilters(min_cjk, max_repeated_lines, max_char_share),
                        near_dedup=NearDedupConfig(threshold) if near_dedup else None,
                        tokenizer=tokenizer, val_fraction=val_fraction, workers=workers, shard=shard)

    cut = None if shard else (lambda folder: run(folder, tokenizer))  # a shard sees a part: it never cuts
    run(out, recipe_tokenizer(recipe, tokenizer, out, vocab_size, cut_from=cut), shard)
