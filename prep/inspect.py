"""`prep inspect`: look inside a token folder the way a trainer will see it.

What people need when a model misbehaves: the counts prep recorded (and what it skipped), how long
documents are in tokens, and one document decoded. For SFT folders the decoded dialog shows which
tokens carry loss (green) and every special token (magenta), so a wrong mask or template is visible
at a glance; a preference folder's pair is shown as its chosen and its rejected dialog.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from prep.records import PrepError
from prep.summary import summary_table
from prep.tokenfile import Split, open_token_folder
from prep.tokenizer import Tokenizer, recorded_tokenizer

TRAINED_STYLE = "bold green"
SPECIAL_STYLE = "bold magenta"


def length_histogram(lengths: np.ndarray, width: int = 40) -> Table:
    """Documents per power-of-two token-length bin, as text bars."""
    t = Table(title="tokens per document", title_justify="left", show_header=True, box=None)
    t.add_column("tokens", justify="right")
    t.add_column("docs", justify="right")
    t.add_column("")
    if len(lengths) == 0:
        return t
    top = int(np.ceil(np.log2(max(int(lengths.max()), 1) + 1)))
    edges = 2 ** np.arange(top + 1)
    counts = np.histogram(lengths, bins=edges)[0]
    peak = max(int(counts.max()), 1)
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        if c:
            t.add_row(f"{lo:,}-{hi - 1:,}", f"{c:,}", "█" * max(1, round(width * c / peak)))
    return t


def render_doc(tok: Tokenizer, ids: np.ndarray, mask: np.ndarray | None) -> Text:
    """Decoded text, specials shown as their names, trained tokens highlighted (mask may be None)."""
    specials = set(tok.special_tokens.values())
    out = Text()
    run: list[int] = []
    run_trained = False

    def flush() -> None:
        if run:
            out.append(tok.decode(run), style=TRAINED_STYLE if run_trained else None)
            run.clear()

    for k, i in enumerate(ids.tolist()):
        trained = bool(mask[k]) if mask is not None else False
        if i in specials:
            flush()
            out.append(tok.decode([i]), style=SPECIAL_STYLE + (" underline" if trained else ""))
            continue
        if trained != run_trained:
            flush()
            run_trained = trained
        run.append(i)
    flush()
    return out


def inspect_folder(folder: str | Path, split: str = "train", doc_index: int = 0, n_tokens: int = 200,
                   console: Console | None = None) -> None:
    """Print the summary, the length histogram of `split`, and document `doc_index` (first `n_tokens`)."""
    console = console or Console()
    tf = open_token_folder(folder)
    s: Split = tf.split(split)
    if s.n_docs and not -s.n_docs <= doc_index < s.n_docs:
        raise PrepError(f"--doc {doc_index}: split {split!r} has {s.n_docs:,} documents (0..{s.n_docs - 1})")
    meta = tf.meta
    ident = meta["tokenizer"]
    console.print(f"[bold]{folder}[/]: kind {tf.kind}, tokenizer {ident['name']} ({ident['len']:,} ids, "
                  f"fingerprint {ident.get('fingerprint')}), format {meta['format_version']}")
    options = meta.get("options")
    if isinstance(options, dict) and options:
        console.print(f"options: {', '.join(f'{k}={v}' for k, v in sorted(options.items()))}")
    try:
        console.print(summary_table(meta))
    except (TypeError, KeyError, AttributeError, ValueError) as e:  # counts a hand-edited meta.json broke
        console.print(f"[yellow]meta.json's counts cannot be summarised ({type(e).__name__}: {e})[/]")
    lengths = np.diff(np.asarray(s.doc_starts, dtype=np.int64))
    if len(lengths):
        console.print(f"{split}: {s.n_docs:,} documents, tokens per document: min {lengths.min():,}, "
                      f"median {int(np.median(lengths)):,}, mean {lengths.mean():,.0f}, max {lengths.max():,}")
    console.print(length_histogram(lengths))
    if s.n_docs == 0:
        console.print(f"split {split!r} has no documents")
        return
    k = doc_index % s.n_docs
    ids = np.asarray(s.doc(k))
    mask = np.asarray(s.doc_mask(k)) if s.mask is not None else None
    tok = recorded_tokenizer(ident, str(folder))
    shown = ids[:n_tokens]
    head = f"{split} document {k:,} of {s.n_docs:,}: {len(ids):,} tokens"
    if mask is not None:
        head += f", {int(mask.sum()):,} trained"
    console.rule(head + (f" (first {len(shown):,} shown)" if len(shown) < len(ids) else ""))
    if mask is not None:
        console.print(Text.assemble("legend: ", ("trained text", TRAINED_STYLE), "  untrained text  ",
                                    ("<|special|>", SPECIAL_STYLE), "  ", ("<|trained special|>",
                                                                          SPECIAL_STYLE + " underline")))
    if tf.kind == "pref":  # one pair: show each of its two dialogs from its start
        _print_pair(console, tok, s, k, ids, mask, n_tokens)
    else:
        console.print(render_doc(tok, shown, mask[:n_tokens] if mask is not None else None))
    console.rule()


def _print_pair(console: Console, tok: Tokenizer, s: Split, k: int, ids: np.ndarray, mask: np.ndarray,
                n_tokens: int) -> None:
    """The chosen and the rejected dialog of pair `k` (the second starts at the pair's second turns.idx entry)."""
    turns = np.asarray(s.turn_starts if s.turn_starts is not None else [], dtype=np.int64)
    cut = int(turns[2 * k + 1] - s.doc_starts[k]) if len(turns) == 2 * s.n_docs else len(ids)
    for name, part in (("chosen", slice(0, cut)), ("rejected", slice(cut, len(ids)))):
        dialog, dialog_mask = ids[part], mask[part]
        console.print(Text(f"{name}: {len(dialog):,} tokens, {int(dialog_mask.sum()):,} trained", style="bold"))
        console.print(render_doc(tok, dialog[:n_tokens], dialog_mask[:n_tokens]))
