"""Progress bars on a terminal, silence in a pipe: ``mb ... | jq`` must see JSON only.

Two kinds of bar share one display: a **transfer** bar per upload or download (bytes,
rate, ETA), removed once it is done so that 2,000 folders do not leave 2,000 lines, and
one **batch** bar per command (folders or jobs done of the total, their rate and the
batch's ETA).
"""

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
        self._batch: Any = None  # the batch bar's task id

    def bar(self, label: str, total: int | None) -> Callable[[int], None]:
        """A new transfer bar; returns the function to call with the bytes moved since the
        last call."""
        if self.progress is None:
            return lambda _n: None
        task = self.progress.add_task(label, total=total, unit="")
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def finish(self, label: str) -> None:
        """The transfer labelled ``label`` ended (done or failed): its bar goes."""
        if self.progress is None:
            return
        for task in list(self.progress.tasks):
            if task.description == label:
                self.progress.remove_task(task.id)

    def batch(self, label: str, unit: str, total: int) -> None:
        """The batch bar (one per command), or a new total for it (``pull --wait`` finds
        more jobs as they finish)."""
        if self.progress is None:
            return
        if self._batch is None:
            self._batch = self.progress.add_task(label, total=total, unit=unit)
        else:
            self.progress.update(self._batch, total=total)

    def step(self, n: int = 1) -> None:
        """``n`` more folders or jobs of the batch are done."""
        if self.progress is not None and self._batch is not None:
            self.progress.advance(self._batch, n)

    def note(self, text: str) -> None:
        """A line above the bars (or on stderr without them)."""
        if self.progress is not None:
            # The line is printed with the bars' last frame below it: draw a fresh one first.
            self.progress.refresh()
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
    from rich.progress import Progress

    with Progress(*_columns(), console=Console(stderr=True), transient=False) as progress:
        yield Bars(progress)


def _columns() -> tuple[Any, ...]:
    """The columns; those of amounts and rates show bytes for a transfer bar and counts
    ("37/2000 folders", "1.5 folders/s") for the batch bar (a task with a ``unit``)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class Amount(ProgressColumn):
        bytes_column = DownloadColumn()

        def render(self, task: Task) -> Text:
            unit = task.fields.get("unit")
            if not unit:
                return self.bytes_column.render(task)
            total = "?" if task.total is None else f"{task.total:.0f}"
            return Text(f"{task.completed:.0f}/{total} {unit}", style="progress.download")

    class Rate(ProgressColumn):
        bytes_column = TransferSpeedColumn()

        def render(self, task: Task) -> Text:
            unit = task.fields.get("unit")
            if not unit:
                return self.bytes_column.render(task)
            speed = task.finished_speed or task.speed
            text = "?" if speed is None else f"{speed:.2f} {unit}/s"
            return Text(text, style="progress.data.speed")

    return (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        Amount(),
        Rate(),
        TimeRemainingColumn(),
    )
