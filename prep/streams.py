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


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of one or more zstd frames (pzstd and `cat` make several), through
    zstandard's stream reader (bounded memory, whatever the ratio).

    That reader ends quietly where a cut-off file ends, as if the file were shorter (or empty); here
    the frame structure is walked first (`zstd_is_whole`), and reaching the end of a cut-off file
    raises `zstandard.ZstdError`, as gzip raises EOFError: what came before it is still read.
    """

    def __init__(self, raw: BinaryIO):
        self.whole = zstd_is_whole(raw)
        self.reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.reader.readinto(buffer)
        if n == 0 and not self.whole:
            raise zstandard.ZstdError("the file ends inside a zstd frame (cut off?)")
        return n


_ZSTD_MAGIC, _SKIPPABLE = 0xFD2FB528, range(0x184D2A50, 0x184D2A60)


def zstd_is_whole(raw: BinaryIO) -> bool:
    """Whether `raw`, from where it is, holds only complete zstd frames: the frame and block headers
    (RFC 8878) are walked with seeks, nothing is decompressed. `raw` is left where it was."""
    start = raw.tell()
    end = raw.seek(0, io.SEEK_END)
    raw.seek(start)

    def skip(n: int) -> bool:
        return raw.seek(n, io.SEEK_CUR) <= end

    def number(n: int) -> int | None:
        data = raw.read(n)
        return int.from_bytes(data, "little") if len(data) == n else None

    try:
        while raw.tell() < end:
            magic = number(4)
            if magic in _SKIPPABLE:
                size = number(4)
                if size is None or not skip(size):
                    return False
                continue
            descriptor = number(1) if magic == _ZSTD_MAGIC else None
            if descriptor is None:
                return False
            fcs, single, checksum, dict_id = descriptor >> 6, descriptor >> 5 & 1, descriptor >> 2 & 1, descriptor & 3
            if not skip((1 - single) + (0, 1, 2, 4)[dict_id] + (single, 2, 4, 8)[fcs]):
                return False
            last = 0
            while not last:
                header = number(3)
                if header is None or header >> 1 & 3 == 3:  # cut off, or the reserved block type
                    return False
                last, size = header & 1, (1 if header >> 1 & 3 == 1 else header >> 3)  # an RLE block holds 1 byte
                if not skip(size):
                    return False
            if checksum and not skip(4):
                return False
        return True
    finally:
        raw.seek(start)


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
        with io.BufferedReader(ZstdFrames(raw), 1 << 20) as f:  # read(n) returns n bytes unless at the end
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
