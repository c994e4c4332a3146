"""Hand-made corpora for the `prep text` tests: the same rows written in every format and compression."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import zstandard

from prep.text import run_text
from tests.prep.wiki_data import decoded_docs, write

EOT = "<|endoftext|>"


def compress(data: bytes, how: str | None) -> bytes:
    if how == "gz":
        return gzip.compress(data, mtime=0)
    if how == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def jsonl_bytes(rows: list) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def write_rows(path: Path, rows: list[dict], how: str | None = None) -> Path:
    """`rows` in the format `path`'s name says (.jsonl, .json, .parquet), compressed as `how` says."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
        return path
    data = json.dumps(rows, ensure_ascii=False, indent=1).encode() if path.suffix == ".json" else jsonl_bytes(rows)
    suffix = {"gz": ".gz", "zst": ".zst"}.get(how or "", "")
    return write(path.with_name(path.name + suffix), compress(data, how))


def chinese(rng: random.Random, n: int) -> str:
    """`n` characters drawn from 2,000 common CJK ideographs: texts that share almost no 5-grams."""
    return "".join(chr(0x4E00 + rng.randrange(2000)) for _ in range(n))


def texts(n: int, seed: int = 0, length: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [f"第{i}篇。" + chinese(rng, length) for i in range(n)]


def prep(src, out, **kw) -> dict:
    kw = {"workers": 1, "val_fraction": 0.0, "show_progress": False, "tokenizer": "bytes", **kw}
    return run_text(src, out, **kw)


def docs(out: Path, tok, split: str = "train") -> list[str]:
    """The decoded documents of a folder, each without its final <|endoftext|> (checked to be there)."""
    found = decoded_docs(out, tok, split)
    assert all(d.endswith(EOT) for d in found)
    return [d[: -len(EOT)] for d in found]


def skipped(meta: dict) -> dict[str, tuple[int, list[str]]]:
    return {reason: (e["count"], e["examples"]) for reason, e in meta["skipped"].items()}
