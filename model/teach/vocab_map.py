"""Between a Qwen2 teacher's ids and a data folder's: Qwen2's own vocabulary, or Qwen2's cut to a corpus.

A cut vocabulary (`prep.vocab`) keeps some of Qwen2's ids, renumbered in their old order. The teacher reads
the data's tokens as Qwen2 ids (`to_teacher`: a kept id's old number). Its distribution is over all of
Qwen2's ids; the probability of an id the cut dropped is not renormalised away but folded onto the FIRST
kept piece that the cut tokenizer makes of that id's bytes (``教授`` dropped, cut into ``教`` ``授``: its mass
goes to ``教``, which is what the student must predict next to start that text). So a sampled teacher id
`q` becomes the data id ``fold[q]``; ``dropped[q]`` says the cut lacked it (its mass is reported per token
as the cut's health figure, `model.teach.capture`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.outputs import read_json
from model.teach.teacher import DATA, TeacherError
from prep.tokenizer import CUT_VOCAB_FILE, TiktokenTokenizer, Tokenizer, load_tokenizer


@dataclass
class VocabMap:
    to_teacher: np.ndarray  # [data ids] -> teacher id
    fold: np.ndarray  # [teacher ids] -> data id
    dropped: np.ndarray  # [teacher ids] bool: the data's vocabulary lacks this id (folded)
    kind: str  # "same" or "cut"


def identity_map(n: int) -> VocabMap:
    ids = np.arange(n, dtype=np.int64)
    return VocabMap(ids, ids, np.zeros(n, bool), "same")


def vocab_map(teacher_vocab: str, data_tok: Tokenizer) -> VocabMap:
    """How the data's ids and a teacher's (`teacher.vocab`) correspond; one line if they cannot."""
    qwen = load_tokenizer("qwen2")
    if teacher_vocab == DATA or data_tok.fingerprint == qwen.fingerprint:
        return identity_map(len(data_tok))
    record_path = Path(data_tok.name) / CUT_VOCAB_FILE
    if not isinstance(data_tok, TiktokenTokenizer) or not record_path.is_file():
        raise TeacherError(f"the data's tokenizer {data_tok.name!r} is neither Qwen2's nor a cut of it, so a Qwen2 "
                           "teacher's ids mean nothing to it")
    record = read_json(record_path)
    if not isinstance(record, dict) or record.get("source", {}).get("fingerprint") != qwen.fingerprint:
        raise TeacherError(f"{record_path}: not cut from Qwen2's vocabulary; a Qwen2 teacher cannot be mapped onto it")
    return cut_map(qwen, data_tok, record["kept_ids"])


def cut_map(qwen: TiktokenTokenizer, cut: TiktokenTokenizer, kept: list[int]) -> VocabMap:
    """The map for a cut vocabulary that keeps Qwen2's regular ids `kept` (then the three specials)."""
    n_q = len(qwen)
    to_teacher = np.full(len(cut), -1, np.int64)
    to_teacher[: len(kept)] = kept
    fold = np.full(n_q, -1, np.int64)
    fold[np.asarray(kept, np.int64)] = np.arange(len(kept))
    for text, i in qwen.special_tokens.items():
        to_teacher[cut.special_tokens[text]] = i
        fold[i] = cut.special_tokens[text]
    dropped = fold < 0
    for q in np.flatnonzero(dropped).tolist():
        # tiktoken's byte-level BPE of the id's raw bytes (they need not be whole UTF-8 characters)
        fold[q] = cut.encoding._encode_bytes(qwen.token_bytes(q))[0]
    if (to_teacher < 0).any():
        raise TeacherError(f"{cut.name}: ids that are not Qwen2's; rebuild the cut vocabulary")
    return VocabMap(to_teacher, fold, dropped, "cut")
