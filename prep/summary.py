"""Counting and telling: what a prep run read, kept and skipped, as meta.json records it and a terminal shows it.

Kept apart from the engine (`prep.pipeline`) so `prep inspect` can print the same summary from a finished
folder's meta.json, and so the engine reads as a data flow rather than bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

MAX_EXAMPLES = 5  # file:line locations kept per reason


def count_reason(table: dict[str, dict], reason: str, location: str) -> None:
    """One more `reason` in a skipped/repaired table, its location kept among the first examples."""
    entry = table.setdefault(reason, {"count": 0, "examples": []})
    entry["count"] += 1
    if len(entry["examples"]) < MAX_EXAMPLES:
        entry["examples"].append(location)


class PrepStats:
    """Counts of one run, per input and per reason, in the order the engine met them (deterministic)."""

    def __init__(self, inputs: Sequence[Any]):
        self.sources = {i.name: {"path": i.name, "bytes": i.n_bytes, "records_read": 0, "records_kept": 0}
                        for i in inputs}
        self.skipped: dict[str, dict] = {}
        self.repaired: dict[str, dict] = {}
        self.read = self.kept = self.chars = 0

    def add_chunk(self, enc: Any) -> None:
        """Record what a worker saw in one chunk (before deduplication)."""
        if enc.file_skip:
            count_reason(self.skipped, enc.file_skip, enc.skip_location)
        for s in enc.skipped:
            count_reason(self.skipped, s.reason, s.location)
        for r in enc.repaired:
            count_reason(self.repaired, r.reason, r.location)
        self.sources[enc.name]["records_read"] += enc.n_records
        self.read += enc.n_records

    def skip(self, reason: str, location: str) -> None:
        count_reason(self.skipped, reason, location)

    def keep(self, source: str, chars: int) -> None:
        self.sources[source]["records_kept"] += 1
        self.kept += 1
        self.chars += chars

    def reasons_line(self) -> str:
        if not self.skipped:
            return f"{self.read} records read, none skipped"
        parts = [f"{r} {e['count']} (e.g. {e['examples'][0]})" for r, e in sorted(self.skipped.items())]
        return f"{self.read} records read; skipped: " + ", ".join(parts)

    def to_meta(self, options: dict) -> dict:
        return {
            "options": options,
            "sources": list(self.sources.values()),
            "records": {"read": self.read, "kept": self.kept, "chars": self.chars},
            "skipped": self.skipped,
            "repaired": self.repaired,
        }


class PrepProgress:
    """A rich progress bar over input bytes (MB/s, tokens so far, ETA), on stderr; a no-op when disabled."""

    def __init__(self, title: str, total_bytes: int, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.tokens = 0
        if enabled:
            self.progress = Progress(  # fits 80 columns
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), DownloadColumn(),
                TransferSpeedColumn(), TextColumn("{task.fields[tokens]}"), TextColumn("ETA"),
                TimeRemainingColumn(), console=console or Console(stderr=True),
            )
            self.task = self.progress.add_task(title, total=total_bytes or None, tokens="0 tokens")

    def __enter__(self) -> PrepProgress:
        if self.enabled:
            self.progress.start()
        return self

    def advance(self, n_bytes: int, n_tokens: int) -> None:
        self.tokens += n_tokens
        if self.enabled:
            self.progress.update(self.task, advance=n_bytes, tokens=f"{self.tokens / 1e6:,.2f}M tokens")

    def __exit__(self, exc_type, *exc) -> None:
        if self.enabled:
            if exc_type is not None:  # leave the error message alone on the screen
                self.progress.live.transient = True
            self.progress.stop()


def summary_table(meta: dict, elapsed: float | None = None) -> Table:
    """The closing table of a run (and of `prep inspect`): documents, skips by reason, tokens, text per token."""
    t = Table(title=f"{meta.get('options', {}).get('command', 'prep')} summary", show_header=False,
              title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column(style="dim")
    sources, rec, splits = meta.get("sources", []), meta.get("records", {}), meta["splits"]
    in_bytes = sum(s["bytes"] for s in sources)
    t.add_row("inputs", f"{len(sources):,}", f"{in_bytes / 1e6:,.1f} MB")
    t.add_row("records read", f"{rec.get('read', 0):,}", "")
    t.add_row("documents kept", f"{sum(s['docs'] for s in splits.values()):,}",
              " / ".join(f"{name} {s['docs']:,}" for name, s in splits.items()))
    for title, table in (("skipped", meta.get("skipped", {})), ("repaired, kept", meta.get("repaired", {}))):
        for reason, e in sorted(table.items()):
            t.add_row(f"  {title}: {reason}", f"{e['count']:,}", ", ".join(e["examples"][:2]))
    n_tokens = sum(s["tokens"] for s in splits.values())
    for name, s in splits.items():
        extra = f"{s['target_tokens']:,} trained" if "target_tokens" in s else ""
        t.add_row(f"tokens {name}", f"{s['tokens']:,}", extra)
    text_bytes = sum(s.get("bytes", 0) for s in splits.values())
    if n_tokens:
        t.add_row("text per token", f"{rec.get('chars', 0) / n_tokens:.2f} chars", f"{text_bytes / n_tokens:.2f} bytes")
    if elapsed:
        t.add_row("time", f"{elapsed:,.1f} s", f"{in_bytes / 1e6 / elapsed:,.2f} MB/s, {n_tokens / elapsed:,.0f} tokens/s")
    return t


def print_summary(meta: dict, elapsed: float, out: Path, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(meta, elapsed))
    val = meta["splits"].get("val", {})
    if val.get("docs", 0) == 0 and meta.get("options", {}).get("val_fraction", 0) > 0:
        console.print("[yellow]note: the val split is empty; use more input or a larger --val-fraction[/]")
    console.print(f"wrote [bold]{out}[/] (inspect it: python -m prep inspect {out})")
