"""Helpers for the shard tests: run a prep command as N shards, merge, and compare with the unsharded run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prep.merge import merge_shards
from prep.shard import ShardSpec

# what the merged folder has that the unsharded one has not: its provenance; and the manifest listing it
MERGE_ONLY = {"merge.json"}
MANIFEST = ".zh-mini-llm.json"


def run_shards(run: Callable[..., dict], src, root: Path, n: int, **kw) -> Path:
    """`run(src, root/shard-i, shard=i/n, **kw)` for every i; returns the folder holding the shards."""
    for i in range(n):
        run(src, root / f"shard-{i}", shard=ShardSpec(i, n), **kw)
    return root


def token_files(folder: Path) -> dict[str, bytes]:
    """Every file of a token folder but its manifest and merge.json, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in MERGE_ONLY | {MANIFEST}}


def assert_merge_equals(run: Callable[..., dict], src, tmp: Path, ns=(1, 3, 8), **kw) -> list[dict]:
    """Unsharded vs N shards merged, for each N: every file identical (meta.json included); the metas."""
    run(src, tmp / "full", **kw)
    expected = token_files(tmp / "full")
    metas = []
    for n in ns:
        shards = run_shards(run, src, tmp / f"shards{n}", n, **kw)
        metas.append(merge_shards([shards], tmp / f"merged{n}"))
        got = token_files(tmp / f"merged{n}")
        assert sorted(got) == sorted(expected)
        for name in expected:
            assert got[name] == expected[name], f"N={n}: {name} differs"
    return metas
