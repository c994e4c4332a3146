"""The ``python -m prep`` command group. Commands are thin: they parse options and call a function.

A command defined in its own module is registered with one line at the bottom: ``cli.add_command(...)``.
"""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import UserPath, one_line_errors
from prep.cli_common import prep_options
from prep.merge_command import merge
from prep.pref_command import pref
from prep.sft_command import sft
from prep.text_command import text
from prep.vocab_command import remap, vocab
from prep.wiki import DEFAULT_MIN_CHARS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Offline prep: raw text -> token files that `python -m train` samples from."""


@cli.command()
@click.argument("wiki_dir", metavar="WIKI_DIR", type=UserPath())
@click.option("--out", type=UserPath(), default=Path("data_bin/wiki"), show_default=True,
              help="Token folder to write (replaced only when the new one is complete).")
@prep_options
@click.option("--min-chars", type=click.IntRange(min=0), default=DEFAULT_MIN_CHARS, show_default=True,
              help="Drop articles whose body (the text after the leading title) has fewer characters: "
              "title-only stubs and empty disambiguation pages.")
@click.option("--to-simplified", is_flag=True, help="Convert traditional to simplified Chinese (OpenCC t2s).")
@one_line_errors
def wiki(wiki_dir: Path, out: Path, tokenizer: str, recipe: str, vocab_size: int | None, val_fraction: float,
         workers: int | None, shard, min_chars: int, to_simplified: bool) -> None:
    """Tokenize Chinese Wikipedia: WIKI_DIR/AA/wiki_00 ... (any depth of */wiki_*) or one file.

    \b
    Formats, detected per file: brightmart wiki_zh_2019 JSON lines ({"id","url","title","text"},
    id/title/text must be strings) and raw WikiExtractor output (<doc id=.. title=..> ... </doc>).
    Writes OUT/{train,val}.bin (uint32 ids, one <|endoftext|> after each article), {split}.idx
    (document starts) and meta.json (counts, skips by reason with file:line examples, options).

    \b
    Bad input never stops the run; each case is counted in meta.json:
      skipped:  invalid_json, invalid_utf8, invalid_unicode (a lone surrogate escape), not_an_object,
                missing_field, non_string_field, truncated_last_line (a cut-off last line), stub,
                duplicate (same NFC text as an earlier article), empty_file, compressed_file,
                too_large (a record over 16 MiB, never held whole);
                WikiExtractor: truncated_doc, unclosed_doc, bad_doc_header, text_outside_doc
      repaired: bom_stripped (a UTF-8 BOM), crlf_line_end, no_final_newline, blank_line
    --to-simplified uses pure-Python OpenCC: about 4x slower than without.
    """
    from prep.recipe_vocab import recipe_tokenizer
    from prep.wiki import run_wiki

    def run(folder: Path, tokenizer: str, shard=None) -> dict:
        return run_wiki(wiki_dir, folder, tokenizer=tokenizer, val_fraction=val_fraction, workers=workers, shard=shard,
                        min_chars=min_chars, to_simplified=to_simplified)

    # a shard never cuts the vocabulary (it sees a part of the corpus): the unsharded prep or `prep vocab` does
    cut = None if shard else (lambda folder: run(folder, tokenizer))
    run(out, recipe_tokenizer(recipe, tokenizer, out, vocab_size, cut_from=cut), shard)


@cli.command("inspect")
@click.argument("folder", metavar="DIR", type=UserPath())
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
@click.option("--doc", "doc_index", type=int, default=0, show_default=True,
              help="Document to show (negative counts from the end).")
@click.option("--tokens", "n_tokens", type=click.IntRange(min=1), default=200, show_default=True,
              help="Show the first N tokens of that document.")
@one_line_errors
def inspect_cmd(folder: Path, split: str, doc_index: int, n_tokens: int) -> None:
    """Summarise a token folder: counts, tokens-per-document histogram, one document decoded.

    For SFT folders the dialog is shown with trained tokens (the loss mask) highlighted and the
    special tokens visible.
    """
    from prep.inspect import inspect_folder

    inspect_folder(folder, split=split, doc_index=doc_index, n_tokens=n_tokens)


cli.add_command(sft)  # `prep sft`: prep/sft_command.py, prep/sft.py
cli.add_command(text)  # `prep text`: prep/text_command.py, prep/text.py
cli.add_command(vocab)  # `prep vocab`: prep/vocab_command.py, prep/vocab.py, prep/vocab_build.py
cli.add_command(remap)  # `prep remap`: prep/remap.py
cli.add_command(pref)  # `prep pref`: prep/pref_command.py, prep/pref.py
cli.add_command(merge)  # `prep merge`: prep/merge_command.py, prep/merge.py, prep/shard_read.py
