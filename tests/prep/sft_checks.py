"""Helpers for the SFT tests: read a token folder back as dialogs, and cut a mask into trained runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prep.tokenfile import open_token_folder


@dataclass
class Dialog:
    ids: list[int]
    mask: list[int]
    turns: list[int]  # offsets within the dialog, from {split}.turns.idx


def read_dialogs(folder, split: str = "train") -> list[Dialog]:
    s = open_token_folder(folder).split(split)
    turns = np.asarray(s.turn_starts if s.turn_starts is not None else [], np.int64)
    out = []
    for i in range(s.n_docs):
        begin, end = int(s.doc_starts[i]), int(s.doc_starts[i + 1])
        inside = turns[(turns >= begin) & (turns < end)] - begin
        out.append(Dialog(s.doc(i).tolist(), s.doc_mask(i).tolist(), inside.tolist()))
    return out


def trained_runs(tok, d: Dialog) -> list[str]:
    """The decoded text of each maximal run of trained tokens, in order."""
    runs, current = [], []
    for t, m in zip(d.ids, d.mask, strict=True):
        if m:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


def untrained_text(tok, d: Dialog) -> str:
    return tok.decode([t for t, m in zip(d.ids, d.mask, strict=True) if not m])


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
