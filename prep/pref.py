"""`prep pref`: preference pairs -> a ``pref`` token folder, on the engine of `prep.pipeline`.

Input as for `prep sft` (a file, a folder of ``*.json`` / ``*.jsonl``, or a dataset name); each file's
format is detected from its first rows (`prep.pref_formats`), and a file in none of them stops the run
with one line naming it. Each pair becomes ONE document of two ChatML dialogs (`prep.chat_template`)
with the same prompt: prompt + chosen reply, then prompt + rejected reply, each closed by
``<|im_end|>\\n<|endoftext|>``. The loss mask is 1 on the two final replies and their ``<|im_end|>`` only
(earlier assistant turns of the prompt are context here, not targets). ``{split}.turns.idx`` holds the
start of both dialogs, so a reader knows where the rejected one begins.

A pair whose longer dialog exceeds ``--max-len`` tokens loses its oldest user/assistant turns until it
fits (counted as ``oldest_turns_dropped``); one that still does not fit is skipped (``too_long``): a
reply is never cut. The split is chosen by a stable hash of the prompt, so pairs that share a prompt
land in the same split; exact duplicate pairs are dropped.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache, partial
from pathlib import Path

from prep.chat_template import Message, chat_pieces, chatml_text, message_pieces
from prep.long_pieces import encode_texts
from prep.pipeline import PrepJob, run_prep
from prep.pref_formats import FORMAT_HELP, detect_pref_format, row_format, row_pair
from prep.records import Document, PrepError, Repaired, Skipped
from prep.row_sources import chunk_rows
from prep.sft import SftSource
from prep.sft_formats import RowError
from prep.sources import Chunk
from prep.tokenizer import SpecialIds, load_tokenizer, nfc

DEFAULT_MAX_LEN = 257  # the mini model's block_size + 1: a dialog of that many tokens is one training window


@lru_cache(maxsize=2)
def _tokenizer(name: str):
    """One tokenizer per worker process, loaded on its first long pair (short ones need none)."""
    return load_tokenizer(name)


def _message_tokens(role: str, text: str, specials: SpecialIds, tokenizer: str) -> int:
    """Tokens of one ChatML message, exactly as the pipeline will encode its pieces."""
    pieces = message_pieces(role, text, specials)
    texts = [p.text for p in pieces if p.text is not None]
    return sum(map(len, encode_texts(_tokenizer(tokenizer), texts))) + len(pieces) - len(texts)


def fit_prompt(prompt: list[Message], replies: tuple[str, str], max_len: int, specials: SpecialIds,
               tokenizer: str) -> tuple[list[Message], int]:
    """The prompt with its oldest turns dropped until both dialogs fit `max_len` tokens, and how many
    turns were dropped; `RowError` ``too_long`` if even the last question does not leave room."""
    # byte-level BPE never gives more tokens than bytes, and a message's header and specials are at most
    # 16 more: below that bound the pair fits without a tokenizer call
    texts = [nfc(t) for _, t in prompt] + [nfc(r) for r in replies]
    if sum(len(t.encode()) + 16 for t in texts) + 1 <= max_len:
        return prompt, 0
    sizes = [_message_tokens(role, nfc(text), specials, tokenizer) for role, text in prompt]
    reply = max(_message_tokens("assistant", nfc(r), specials, tokenizer) for r in replies)
    first = 1 if prompt[0][0] == "system" else 0
    dropped = 0
    while sum(sizes) + reply + 1 > max_len:  # + 1: <|endoftext|>
        if len(prompt) - first <= 1:
            raise RowError("too_long", f"needs {sum(sizes) + reply + 1} tokens")
        del prompt[first : first + 2], sizes[first : first + 2]  # the oldest question and its answer
        dropped += 2
    return prompt, dropped


def pair_document(prompt: list[Message], chosen: str, rejected: str, specials: SpecialIds, location: str) -> Document:
    """The pair as one document: the chosen dialog, then the rejected one; earlier replies are untrained."""
    context, _ = chat_pieces([(role, nfc(text)) for role, text in prompt], specials)
    context = [dataclasses.replace(p, trained=False) for p in context]
    dialogs = []
    for reply in (chosen, rejected):
        dialogs.append([*context, *chat_pieces([("assistant", nfc(reply))], specials, end_of_text=True)[0]])
    key = chatml_text(prompt)
    return Document(dialogs[0] + dialogs[1], split_key=key, dedup_key=f"{key}\x00{chosen}\x00{rejected}",
                    location=location, turn_starts=[0, len(dialogs[0])])


def parse_pref(chunk: Chunk, specials: SpecialIds, max_len: int = DEFAULT_MAX_LEN,
               tokenizer: str = "qwen2") -> list[Document | Skipped | Repaired]:
    """The pipeline's parse function: rows of one chunk (format `chunk.fmt`) -> pairs or counted skips."""
    out: list[Document | Skipped | Repaired] = []
    for location, row in chunk_rows(chunk, out):
        try:
            prompt, chosen, rejected = row_pair(row, chunk.fmt)
            prompt, dropped = fit_prompt(prompt, (chosen, rejected), max_len, specials, tokenizer)
        except RowError as e:
            out.append(Skipped(e.reason, location))
            continue
        out.append(pair_document(prompt, chosen, rejected, specials, location))
        out += [Repaired("oldest_turns_dropped", location)] * (dropped // 2)
    return out


class PrefSource(SftSource):
    """`prep sft`'s inputs, with the preference formats; a file in none of them is an error."""

    what = "preference data files"

    def __init__(self, spec: str | Path, chunk_bytes: int | None = None):
        super().__init__(spec, chunk_bytes, detect_pref_format, row_format)

    def check_format(self, name: str, fmt: str, head: list[object]) -> None:
        if fmt == "unknown" and (head or self._has_bytes(name)):
            keys = sorted(head[0])[:8] if head and isinstance(head[0], dict) else None
            seen = f" (its first row has keys {keys})" if keys is not None else ""
            raise PrepError(f"{name}: no row in a preference format{seen}; expected one of: {FORMAT_HELP}")

    def _has_bytes(self, name: str) -> bool:
        return any(n == name and info.n_bytes for (_, n), info in zip(self.files, self.inputs, strict=True))


def run_pref(input: str | Path, out: str | Path, tokenizer: str = "qwen2", max_len: int = DEFAULT_MAX_LEN,
             val_fraction: float = 0.005, workers: int | None = None, show_progress: bool = True,
             chunk_bytes: int | None = None, console=None, shard=None) -> dict:
    """`prep pref` as a function: returns the meta.json written to `out`."""
    options = {"command": "pref", "input": str(input), "tokenizer": tokenizer, "max_len": max_len,
               "val_fraction": val_fraction}
    job = PrepJob(source=PrefSource(input, chunk_bytes), parse=partial(parse_pref, max_len=max_len, tokenizer=tokenizer),
                  out=Path(out), kind="pref", options=options, tokenizer=tokenizer, val_fraction=val_fraction,
                  workers=workers, with_turns=True, title="prep pref", show_progress=show_progress,
                  shard=shard)
    return run_prep(job, console)
