"""Sharded prep on one machine: N local shards (one process each) + merge vs one process pool, same run.

    python -m bench.shards [--wiki DIR] [--shards N] [--workers W] [--repeat 1]

Input: ../shared/data/wiki_zh (6 files, 6.2 MB), else the bundled sample; the real Qwen2 tokenizer.

* baseline:  ``prep wiki --workers W`` (one process pool of W workers, every core by default);
* sharded:   ``prep wiki --shard i/N --workers 1`` for i < N as N processes at once, then ``prep merge``;
             reported as the shards' wall time, the merge's, and their sum;
* ratio:     baseline seconds / sharded seconds (> 1: the shards are faster);
* merge:     `prep.merge.merge_shards` timed in this process (no interpreter start), in seconds per GB of
             the merged folder (tokens, index, meta) and per GB of input text.

The prep figures are wall time of whole commands (a process start and the tokenizer load included: what a
user waits for), the best of ``--repeat``. The merged folder is checked to equal the unsharded one. On one
machine shards mostly pay off where a single pool cannot keep its cores busy (its main process's dedup and
writing); their purpose is many machines, where the ratio is about N.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def default_wiki() -> Path:
    shared = SHARED / "data" / "wiki_zh"
    return shared if shared.is_dir() else ROOT / "sample_data" / "wiki_zh"


def prep(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "prep", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait(*procs: subprocess.Popen) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"prep failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")


def one_round(wiki: Path, tmp: Path, n: int, workers: int) -> dict:
    from prep.merge import merge_shards

    t0 = time.perf_counter()
    wait(prep("wiki", str(wiki), "--out", str(tmp / "full"), "--workers", str(workers)))
    t1 = time.perf_counter()
    wait(*[prep("wiki", str(wiki), "--out", str(tmp / "shards" / f"shard-{i}"), "--workers", "1",
                "--shard", f"{i}/{n}") for i in range(n)])
    t2 = time.perf_counter()
    merge_shards([tmp / "shards"], tmp / "merged")  # in this process: the merge's own cost, no interpreter start
    t3 = time.perf_counter()
    same = all((tmp / "full" / f).read_bytes() == (tmp / "merged" / f).read_bytes()
               for f in ("train.bin", "train.idx", "val.bin", "val.idx", "meta.json"))
    merged_bytes = sum(p.stat().st_size for p in (tmp / "merged").iterdir() if p.is_file())
    return {"baseline": t1 - t0, "shards": t2 - t1, "merge": t3 - t2, "same": same, "merged_bytes": merged_bytes}


@click.command()
@click.option("--wiki", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--shards", "n", type=click.IntRange(1, 64), default=None, help="Default: the number of cores.")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="The baseline's pool (default: every core).")
@click.option("--repeat", type=click.IntRange(1, 10), default=1)
def main(wiki: Path | None, n: int | None, workers: int | None, repeat: int) -> None:
    from prep.pipeline import default_workers

    wiki = wiki or default_wiki()
    cores = default_workers()
    n, workers = n or cores, workers or cores
    in_bytes = sum(p.stat().st_size for p in wiki.rglob("wiki_*") if p.is_file())
    rounds = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append(one_round(wiki, Path(tmp), n, workers))
    best = {k: min(r[k] for r in rounds) for k in ("baseline", "shards", "merge")}
    sharded = best["shards"] + best["merge"]
    mb = in_bytes / 1e6
    print(f"input {wiki} ({mb:.1f} MB), {cores} cores, best of {repeat}")
    print(f"one pool of {workers} workers:       {best['baseline']:7.2f} s  ({mb / best['baseline']:.2f} MB/s)")
    print(f"{n} shards, 1 worker each, at once: {best['shards']:7.2f} s")
    print(f"merge (in-process):              {best['merge']:7.2f} s  "
          f"({best['merge'] / (rounds[0]['merged_bytes'] / 1e9):.1f} s per GB merged, "
          f"{best['merge'] / (in_bytes / 1e9):.1f} s per GB of input)")
    print(f"shards + merge:                  {sharded:7.2f} s  ({mb / sharded:.2f} MB/s)")
    print(f"ratio (pool / shards + merge):   {best['baseline'] / sharded:7.2f}x")
    print(f"merged folder equals the unsharded one: {all(r['same'] for r in rounds)}")


if __name__ == "__main__":
    main()
