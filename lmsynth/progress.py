"""Progress bars for long work, shown only when the CLI turns them on.

Library code wraps its loops in `track(...)`; under the CLI that draws a rich bar on stderr (stdout stays
clean for commands like `lmsynth key`), and everywhere else it is a plain pass-through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


T = TypeVar("T")

_progress: Progress | None = None


@contextlib.contextmanager
def enabled(console: Console | None = None) -> Iterator[None]:
    """Show bars for everything tracked inside this block."""
    global _progress
    if _progress is not None:
        yield
        return
    console = console or Console(stderr=True)
    _progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    try:
        with _progress:
            yield
    finally:
        _progress = None


def track(items: Iterable[T], description: str, *, total: int | None = None, unit: str = "rows") -> Iterator[T]:
    """Yield `items`, advancing a bar when bars are on."""
    if _progress is None:
        yield from items
        return
    task = _progress.add_task(description, total=total, rate="")
    n = 0
    for item in items:
        yield item
        n += 1
        _progress.advance(task)
        if n % 256 == 0:
            speed = _progress.tasks[task].speed if task < len(_progress.tasks) else None
            _progress.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "")
    _progress.update(task, total=n, completed=n)


@contextlib.contextmanager
def task(description: str, *, total: float | None = None) -> Iterator[callable]:
    """A bar advanced by hand: the block receives `advance(k, rate=...)`."""
    if _progress is None:
        yield lambda k=1, **fields: None
        return
    tid = _progress.add_task(description, total=total, rate="")

    def advance(k: float = 1, **fields: str) -> None:
        _progress.update(tid, advance=k, **fields)

    yield advance
