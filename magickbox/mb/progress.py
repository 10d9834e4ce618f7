"""Progress bars on a terminal, silence in a pipe: ``mb ... | jq`` must see JSON only."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def wanted(disabled: bool = False) -> bool:
    """Bars only when a person watches: stderr is a terminal and not switched off."""
    return not disabled and sys.stderr.isatty()


class Bars:
    """Rich bars on stderr, or nothing at all (every method is then a no-op)."""

    def __init__(self, progress: Any) -> None:  # a rich Progress, or None
        self.progress = progress

    def bar(self, label: str, total: int | None) -> Callable[[int], None]:
        """A new bar; returns the function to call with the bytes moved since the last call."""
        if self.progress is None:
            return lambda _n: None
        task = self.progress.add_task(label, total=total)
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def finish(self, label: str) -> None:
        """Fill the bar labelled ``label`` (a size estimate may stop a little short)."""
        if self.progress is None:
            return
        for task in self.progress.tasks:
            if task.description == label:
                self.progress.update(task.id, total=task.completed, completed=task.completed)

    def note(self, text: str) -> None:
        """A line above the bars (or on stderr without them)."""
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr)


@contextmanager
def bars(enabled: bool) -> Iterator[Bars]:
    if not enabled:
        yield Bars(None)
        return
    # rich costs ~0.1 s to import: only when a person watches.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield Bars(progress)
