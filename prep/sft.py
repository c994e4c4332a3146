"""`prep sft`: instruction data -> ChatML token files with loss masks, on the engine of `prep.pipeline`.

Input: a JSON-lines or JSON-array file, a folder of ``*.json`` / ``*.jsonl`` files (any depth), or a
dataset name for `datasets` (``BelleGroup/multiturn_chat_0.8M``). Each file's format is detected from its
first rows (`prep.sft_formats`), so a folder may mix Belle multi-turn, single-turn and ShareGPT sets.

Every usable row becomes one dialog (`prep.chat_template`): an optional system message, then the turns,
then ``<|endoftext|>``. The mask trains each assistant reply and its ``<|im_end|>``. The split is chosen by
a stable hash of the dialog's own messages (not of ``--system``, so changing the prompt never moves a
dialog between train and val); exact duplicates are the same rendered dialog, system prompt included.
The folder also gets ``{split}.turns.idx``: where a training block may start, i.e. the offset of every
user turn's ``<|im_start|>``, except that a dialog with a system message lists the start of that
message instead of its first user turn (so blocks that open a dialog keep the system prompt).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from prep.chat_template import Message, chat_pieces, chatml_text
from prep.pipeline import PrepJob, run_prep
from prep.records import Document, PrepError, Repaired, Skipped, holds_invalid_text
from prep.row_sources import (
    chunk_rows,
    hub_rows,
    is_json_array,
    json_array_rows,
    json_size,
    looks_like_hub_name,
    row_chunks,
    spec_inputs,
)
from prep.sft_formats import DETECT_ROWS, RowError, detect_row_format, row_format, row_messages
from prep.sources import MAX_RECORD_BYTES, Chunk, FileSource, auto_chunk_bytes
from prep.tokenizer import SpecialIds, nfc

Record = Document | Skipped | Repaired
INPUT_PATTERNS = ("*.json", "*.jsonl")
_DETECT_BYTES = 8 << 20  # rows held at most to choose a file's format
_DETECT_LOOK = 10 * DETECT_ROWS  # rows looked at most to find DETECT_ROWS of a known format


def dialog_document(messages: list[Message], specials: SpecialIds, location: str, system: str = "") -> Document:
    """One dialog as pieces, ending in <|endoftext|>; `system` is used unless the row has its own."""
    messages = [(role, nfc(content)) for role, content in messages]
    text = chatml_text(messages)
    if system and messages[0][0] != "system":
        messages.insert(0, ("system", nfc(system)))
        dedup_key = chatml_text(messages[:1]) + text
    else:
        dedup_key = text
    pieces, turn_starts = chat_pieces(messages, specials, end_of_text=True)
    return Document(pieces, split_key=text, dedup_key=dedup_key, location=location, turn_starts=turn_starts)


def parse_sft(chunk: Chunk, specials: SpecialIds, system: str = "") -> list[Record]:
    """The pipeline's parse function: rows of one chunk (format `chunk.fmt`) -> dialogs or counted skips."""
    out: list[Record] = []
    for location, row in chunk_rows(chunk, out):
        repairs: list[str] = []
        try:
            out.append(dialog_document(row_messages(row, chunk.fmt, repairs), specials, location, system))
        except RowError as e:
            out.append(Skipped(e.reason, location))
            continue
        out += [Repaired(reason, location) for reason in repairs]
    return out


def sft_parser(system: str = "") -> partial:
    """`parse_sft` with the system prompt bound: picklable, for the pipeline's workers."""
    return partial(parse_sft, system=system)


def _jsonl_format(path: Path, detect: Callable[[Iterator[object]], str | None]) -> str:
    """Detect a JSON-lines file's format from its first decodable rows; a line over the size cap is read
    past (never held) and the rows after it are looked at (`prep.sources.MAX_RECORD_BYTES`)."""
    def rows() -> Iterator[object]:
        held = 0
        with open(path, "rb") as f:
            for _ in range(_DETECT_LOOK):
                raw = f.readline(MAX_RECORD_BYTES + 1)
                if not raw or held > _DETECT_BYTES:
                    return
                if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):  # too large: counted when read
                    while (more := f.readline(1 << 20)) and not more.endswith(b"\n"):
                        pass
                    continue
                held += len(raw)
                try:
                    yield json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                except (ValueError, RecursionError):  # bad JSON or UTF-8: counted later, when the row is parsed
                    continue

    return detect(rows()) or "unknown"


def detection_head(rows: Iterator[tuple[int, object, int]], classify: Callable[[object], str | None]
                   ) -> list[tuple[int, object, int]]:
    """The first rows, enough to choose a format: `DETECT_ROWS` rows `classify` recognises, looking past
    rows it does not (not objects, too large, another format) up to `_DETECT_LOOK` rows or
    `_DETECT_BYTES` (but always `DETECT_ROWS` rows, as before)."""
    head: list[tuple[int, object, int]] = []
    known = held = 0
    for item in rows:
        head.append(item)
        known += classify(item[1]) is not None
        held += item[2]
        if known >= DETECT_ROWS or len(head) >= _DETECT_LOOK or (held > _DETECT_BYTES and len(head) >= DETECT_ROWS):
            break
    return head


class SftSource:
    """Chunks of every input in a fixed order: JSON lines as raw bytes, JSON arrays and hub rows as parsed rows.

    `detect` names a file's format from its first rows (`prep.pref.PrefSource` passes the preference
    formats'); `check_format` may refuse a file whose format it could not name."""

    what = "SFT data files"

    def __init__(self, spec: str | Path, chunk_bytes: int | None = None,
                 detect: Callable[[Iterator[object]], str | None] = detect_row_format,
                 classify: Callable[[object], str | None] = row_format):
        self.spec = str(spec)
        self.detect, self.classify = detect, classify
        self.hub = looks_like_hub_name(self.spec)
        self.files, self.inputs = spec_inputs(self.spec, self.hub, INPUT_PATTERNS, self.what)
        self.chunk_bytes = chunk_bytes or auto_chunk_bytes(sum(i.n_bytes for i in self.inputs) or 1 << 40)

    def check_format(self, name: str, fmt: str, head: list[object]) -> None:
        """Nothing for SFT: rows of an unknown format are skipped and counted (`unknown_format`)."""

    def _row_chunks(self, name: str, rows: Iterator[tuple[int, object, int]], file_bytes: int = 0) -> Iterator[Chunk]:
        """`row_chunks` of format detected from the first rows."""
        head = detection_head(rows, self.classify)
        fmt = self.detect(row for _, row, _ in head) or "unknown"
        self.check_format(name, fmt, [row for _, row, _ in head])
        return row_chunks(name, itertools.chain(head, rows), self.chunk_bytes, fmt, file_bytes)

    def chunks(self) -> Iterator[Chunk]:
        if self.hub:
            rows = ((n, row, json_size(row)) for n, row in hub_rows(self.spec))
            yield from self._row_chunks(self.spec, rows)
            return
        for (path, name), info in zip(self.files, self.inputs, strict=True):
            if info.n_bytes and is_json_array(path):
                yield from self._row_chunks(name, json_array_rows(path), info.n_bytes)
            else:  # JSON lines; FileSource also turns empty and compressed files into counted skips
                fmt = _jsonl_format(path, self.detect)
                self.check_format(name, fmt, [])
                yield from FileSource([(path, name)], lambda _head, fmt=fmt: fmt, {fmt: b"\n"},
                                      self.chunk_bytes).chunks()


def run_sft(input: str | Path, out: str | Path, tokenizer: str = "qwen2", system: str = "",
            val_fraction: float = 0.005, workers: int | None = None, show_progress: bool = True,
            chunk_bytes: int | None = None, console=None, shard=None) -> dict:
    """`prep sft` as a function: returns the meta.json written to `out`."""
    if holds_invalid_text(system):  # bytes that are not UTF-8 on the command line arrive as lone surrogates
        raise PrepError("--system: not valid UTF-8 text; every dialog would be skipped as invalid_unicode")
    options = {"command": "sft", "input": str(input), "tokenizer": tokenizer, "system": system,
               "val_fraction": val_fraction}
    job = PrepJob(source=SftSource(input, chunk_bytes), parse=sft_parser(system), out=Path(out), kind="sft",
                  options=options, tokenizer=tokenizer, val_fraction=val_fraction, workers=workers,
                  with_turns=True, title="prep sft", show_progress=show_progress, shard=shard)
    return run_prep(job, console)
