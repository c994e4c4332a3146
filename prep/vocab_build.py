"""Build a cut vocabulary's folder from token folders, and measure what the cut costs in tokens.

The measure is exact and cheap: a document whose ids are all kept encodes to the same tokens (see
`prep.vocab`), so only documents holding a dropped id are decoded (Qwen2's ids are lossless) and encoded
again with the cut tokenizer. Chat folders are re-encoded between special tokens, a close estimate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from common.outputs import OutputFolder, write_json_atomic
from prep.hf_tokenizer_files import write_qwen2_tokenizer_folder
from prep.tokenfile import Split
from prep.tokenizer import CUT_VOCAB_FILE, TiktokenTokenizer, Tokenizer
from prep.vocab import (
    check_size,
    choose_ids,
    count_ids,
    cut_ranks,
    id_map,
    merge_parts,
    open_folders,
    source_tokenizer,
    split_names,
)

FOLDER_KIND = "tokenizer/cut-vocab"
BATCH_DOCS = 1024  # documents encoded per tiktoken call: bounded memory, threads kept busy


def build_vocab(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, size: int,
                splits: Sequence[str] = ("train",), counts: np.ndarray | None = None) -> dict:
    """Count ids in `splits` of the token folders `inputs` (unless `counts` gives them: shards' sums), keep
    `size` ids, write the folder `out`. Returns the record written to ``cut_vocab.json``."""
    folders = open_folders(inputs)
    qwen = source_tokenizer(folders)
    check_size(size, qwen)
    counts = count_ids(folders, len(qwen), splits) if counts is None else counts
    kept = choose_ids(counts, merge_parts(qwen), size)
    cut = TiktokenTokenizer(str(out), cut_ranks(qwen, kept))
    lookup = id_map(qwen, kept, cut)
    regular = counts[: len(qwen.ranks)]
    record = {
        "source": qwen.identity(),
        "size": len(cut),
        "counted": {"folders": [str(f.path) for f in folders], "splits": list(splits), "tokens": int(counts.sum()),
                    "distinct_ids": int(np.count_nonzero(regular)),
                    "coverage": float(regular[kept].sum() / max(1, regular.sum()))},
        "token_increase": {str(f.path): {s: token_increase(f.split(s), qwen, cut, lookup) for s in split_names(f)}
                           for f in folders},
        "kept_ids": kept,  # new id i is Qwen2's id kept_ids[i]; the specials follow
    }
    with OutputFolder(Path(out), FOLDER_KIND, "vocabulary folder") as folder:
        write_qwen2_tokenizer_folder(cut, folder.partial)
        write_json_atomic(folder.path(CUT_VOCAB_FILE), record)
        folder.commit()
    return record


def token_increase(split: Split, source: Tokenizer, cut: Tokenizer, lookup: np.ndarray) -> dict:
    """Tokens of `split` with Qwen2's ids and with the cut ones (exact for plain text)."""
    gone = np.flatnonzero(lookup[np.asarray(split.tokens)] < 0)
    docs = np.unique(np.searchsorted(split.doc_starts, gone, side="right") - 1).tolist()
    before = after = 0
    for start in range(0, len(docs), BATCH_DOCS):
        texts, specials = [], 0
        for d in docs[start : start + BATCH_DOCS]:
            ids = split.doc(d)
            before += len(ids)
            pieces = list(_text_pieces(ids.tolist(), source))
            specials += len(ids) - sum(n for _, n in pieces)
            texts += [text for text, _ in pieces]
        after += specials + sum(len(t) for t in cut.encode_batch(texts, num_threads=os.cpu_count() or 1))
    n = split.n_tokens
    return {"tokens": n, "tokens_cut": n - before + after, "docs_reencoded": len(docs),
            "increase": (after - before) / n if n else 0.0}


def _text_pieces(ids: list[int], tok: Tokenizer) -> Iterator[tuple[str, int]]:
    """The text between special tokens, with how many ids it took."""
    specials = set(tok.special_tokens.values())
    piece: list[int] = []
    for i in ids + [tok.eot_id]:
        if i in specials:
            if piece:
                yield b"".join(map(tok.token_bytes, piece)).decode("utf-8", errors="replace"), len(piece)
            piece = []
        else:
            piece.append(i)


def folder_summary(record: dict) -> list[str]:
    """Lines for the terminal: what was counted, kept, and what the cut costs."""
    c = record["counted"]
    lines = [f"{record['size']:,} ids kept of {record['source']['len']:,}; counted {c['tokens']:,} tokens "
             f"({c['distinct_ids']:,} distinct ids) in {', '.join(c['folders'])} ({'+'.join(c['splits'])}); "
             f"kept ids cover {c['coverage']:.2%} of them"]
    for path, splits in record["token_increase"].items():
        for name, inc in splits.items():
            lines.append(f"{path} {name}: {inc['tokens']:,} -> {inc['tokens_cut']:,} tokens "
                         f"(+{inc['increase']:.2%}; {inc['docs_reencoded']:,} documents held a dropped id)")
    return lines

