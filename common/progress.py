"""A counting progress bar: done / total with rate and time left (on stderr, gone when done)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        if not task.speed:
            return Text("")
        # whole units for token / document counts; a decimal for slow unnamed items (lm-eval requests)
        return Text(f"{task.speed:,.0f} {self.unit}/s" if self.unit else f"{task.speed:.1f}/s")


@contextlib.contextmanager
def bar(console: Console | None, what: str, total: int, unit: str = "",
        disable: bool = False) -> Iterator[Callable[[int], None]]:
    """``with bar(console, "scoring", n_docs, "docs") as advance: advance(k)``."""
    columns = (TextColumn(f"[bold]{what}[/]"), BarColumn(), MofNCompleteColumn(), _Rate(unit), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True, disable=disable) as progress:
        task = progress.add_task("", total=total)
        yield lambda n: progress.advance(task, n)
