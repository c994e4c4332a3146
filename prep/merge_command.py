"""The ``python -m prep merge`` command (registered in `prep.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import UserPath, one_line_errors


@click.command()
@click.argument("shards", metavar="SHARD...", nargs=-1, required=True, type=UserPath())
@click.option("--out", type=UserPath(), default=None,
              help="Token folder to write (replaced only when the new one is complete).")
@click.option("--manifest", type=UserPath(), default=None, metavar="FILE.json",
              help="Instead of --out: write a small file that `train --data FILE.json` reads as a mixture of the "
              "shards in place, weighted by their train tokens (nothing copied; duplicates across shards stay).")
@one_line_errors
def merge(shards: tuple[Path, ...], out: Path | None, manifest: Path | None) -> None:
    """Merge shards 0..N-1 of one prep run (made with --shard I/N) into the folder the unsharded run writes.

    \b
    SHARD is a shard's folder, or a folder whose subfolders are the shards. Exact and near-duplicates are
    removed across shards in input order, so OUT equals the unsharded run's folder byte for byte
    (.bin, .idx, masks, meta.json); OUT/merge.json names the shards. A missing shard, one given twice, or
    one of another tokenizer, options or inputs is refused with one line. See docs/shards.md.
    """
    from prep.merge import merge_shards, write_manifest

    if (out is None) == (manifest is None):
        raise click.UsageError("give --out DIR (the merged folder) or --manifest FILE.json (the shards in place)")
    if manifest is not None:
        record = write_manifest(shards, manifest)
        extra = record["not_deduplicated_across_shards"]
        click.echo(f"wrote {manifest} ({len(record['folders'])} shard folders; read in place, they hold "
                   f"{extra['documents']:,} documents ({extra['tokens']:,} tokens) that duplicate earlier shards)")
        return
    meta = merge_shards(shards, out)
    counts = ", ".join(f"{name} {s['docs']:,} documents, {s['tokens']:,} tokens" for name, s in meta["splits"].items())
    click.echo(f"wrote {out} ({counts})")
