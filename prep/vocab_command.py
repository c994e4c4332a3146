"""The ``python -m prep vocab`` and ``python -m prep remap`` commands (registered in `prep.cli`)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from common.cli import one_line_errors


@click.command()
@click.argument("inputs", metavar="SRC...", nargs=-1, required=True)
@click.option("--size", type=click.IntRange(min=1), default=32768, show_default=True,
              help="Ids in all: the 256 byte tokens, the most used ids with their merge paths, the 3 specials.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data_bin/vocab"), show_default=True,
              help="Tokenizer folder to write (replaced only when the new one is complete).")
@click.option("--splits", type=click.Choice(["train", "all"]), default="train", show_default=True,
              help="Count ids in the train split only (val stays held-out, to measure the cut on) or in both.")
@one_line_errors
def vocab(inputs: tuple[str, ...], size: int, out: Path, splits: str) -> None:
    """Cut Qwen2's vocabulary to a corpus: a tokenizer folder of --size ids that encodes that corpus
    with the very same tokens, so a model's embedding and output layer shrink to --size rows.

    \b
    SRC is a token folder made with the default tokenizer (prep wiki | sft | text), or raw text that
    `prep text` reads (a file or folder of .jsonl / .json / .parquet / .txt), tokenized first, or the
    shards of one run (--shard I/N): their stored id counts are summed as `prep merge` would keep them.
    Kept: the 256 byte tokens, the most used ids, each with the tokens BPE merges it from (so it can
    still be formed), then unused ids in Qwen2's merge order up to --size, and the 3 specials. Ids keep
    their order, so text whose Qwen2 tokens are all kept gets the same pieces; any other text is still
    encoded losslessly, in more tokens. Prints the token increase on each folder's train and val split.

    \b
    OUT is a Hugging Face tokenizer folder (AutoTokenizer loads it) plus cut_vocab.json (the kept ids).
    Use it with `prep wiki|sft|text --tokenizer OUT`, or renumber a folder: `prep remap`.
    """
    from prep.shard_read import is_shards
    from prep.vocab_build import build_vocab, folder_summary

    counted = ("train", "val") if splits == "all" else ("train",)
    if any(is_shards(i) for i in inputs):
        record = shards_vocab(inputs, out, size, counted)
    else:
        with counted_folders(inputs, out) as folders:
            record = build_vocab(folders, out, size, counted)
    click.echo("\n".join(folder_summary(record)))
    click.echo(f"wrote {out} (use it: python -m prep wiki ... --tokenizer {out})")


def shards_vocab(inputs: tuple[str, ...], out: Path, size: int, splits: tuple[str, ...]) -> dict:
    """`build_vocab` over shards 0..N-1 of one run: the ids of the folder their merge writes, never re-read."""
    from prep.merge import shard_id_counts
    from prep.shard_read import open_shards
    from prep.vocab_build import build_vocab

    shards = open_shards(inputs)
    return build_vocab([s.path for s in shards], out, size, splits, counts=shard_id_counts(shards, splits))


@contextlib.contextmanager
def counted_folders(inputs: tuple[str, ...], out: Path) -> Iterator[list[str]]:
    """Token folders for `inputs`: raw text is tokenized with Qwen2 into a scratch folder beside `out`,
    removed afterwards."""
    from prep.text import run_text

    raw = [i for i in inputs if not (Path(i) / "meta.json").is_file()]
    if not raw:
        yield list(inputs)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.counting-", dir=out.parent) as scratch:
        made = {}
        for n, src in enumerate(raw):
            made[src] = str(Path(scratch) / f"tokens{n}")
            run_text(src, made[src], val_fraction=0.0)
        yield [made.get(i, i) for i in inputs]


@click.command()
@click.argument("src", metavar="SRC", type=click.Path(path_type=Path))
@click.option("--tokenizer", "vocab_folder", required=True, metavar="FOLDER",
              help="The cut vocabulary (from `prep vocab`) to renumber into.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Token folder to write.")
@one_line_errors
def remap(src: Path, vocab_folder: str, out: Path) -> None:
    """Renumber a Qwen2 token folder into a cut vocabulary's ids, without tokenizing again.

    Only a folder whose ids are all kept remaps (then the cut tokenizer makes the very same tokens);
    otherwise it is refused with the count of dropped tokens: re-tokenize with --tokenizer FOLDER.
    """
    from prep.remap import remap_folder

    meta = remap_folder(src, vocab_folder, out)
    counts = ", ".join(f"{name} {s['tokens']:,} tokens" for name, s in meta["splits"].items())
    click.echo(f"wrote {out} ({counts}) with the ids of {vocab_folder}")
