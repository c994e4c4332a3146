"""Input files, compressed or not: gzip and zstd are decompressed as a stream, never whole in memory.

A file's compression is recognised by its first bytes, not its name, so ``wiki_00`` that is really gzip
and ``x.jsonl.gz`` that is really plain text both read right. bzip2 and xz are recognised but not read
(a reader counts such a file as ``compressed_file``).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import BinaryIO

import zstandard

COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
STREAMED = ("gzip", "zstd")  # the compressions `decompressed` reads
COMPRESSED_SUFFIXES = (".gz", ".zst")
# What a damaged or cut-off compressed file raises while it is read.
DECOMPRESS_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


def compression(head: bytes) -> str | None:
    """``gzip``, ``zstd``, ``bzip2`` or ``xz`` if `head` (a file's first bytes) starts like one, else None."""
    return next((kind for magic, kind in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


def file_compression(path: Path) -> str | None:
    with open(path, "rb") as f:
        return compression(f.read(8))


@contextmanager
def decompressed(raw: BinaryIO, kind: str | None) -> Iterator[BinaryIO]:
    """`raw` itself (kind None), or a stream of its decompressed bytes. `raw` stays open, and its
    ``tell()`` says how much of the compressed file is consumed (for progress bars)."""
    if kind is None:
        with nullcontext(raw):
            yield raw
    elif kind == "gzip":
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            yield f
    elif kind == "zstd":
        # read_across_frames: files made by pzstd or by concatenation hold several frames.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
        with io.BufferedReader(reader, 1 << 20) as f:  # read(n) returns n bytes unless at the end
            yield f
    else:
        raise ValueError(f"cannot stream {kind}; only {', '.join(STREAMED)}")


@contextmanager
def open_input(path: Path) -> Iterator[BinaryIO]:
    """The bytes of a plain, gzip or zstd file (raises ValueError for bzip2 and xz)."""
    with open(path, "rb") as raw:
        kind = compression(raw.read(8))
        raw.seek(0)
        with decompressed(raw, kind) as f:
            yield f
