"""Progress of a conversion: a rich display per layer on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class ConvertProgress(Protocol):
    """What the converter reports; one ``key`` per layer (its source digest)."""

    def start(self, key: str, what: str, total: int) -> None: ...

    def advance(self, key: str, done: int) -> None: ...

    def finish(self, key: str, outcome: str) -> None: ...

    def close(self) -> None: ...


class PlainProgress:
    """One log line per layer step, for logs and CI (no terminal)."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self._out = out

    def start(self, key: str, what: str, total: int) -> None:
        print(f"{_short(key)}: {what} ({total} bytes)", file=self._out, flush=True)

    def advance(self, key: str, done: int) -> None:
        pass  # a line per step is enough for logs

    def finish(self, key: str, outcome: str) -> None:
        print(f"{_short(key)}: {outcome}", file=self._out, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """A live bar per layer on a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.fields[key]}"),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._progress.start()

    def start(self, key: str, what: str, total: int) -> None:
        task = self._tasks.get(key)
        if task is None:
            self._tasks[key] = self._progress.add_task(what, total=total, key=_short(key))
        else:
            self._progress.update(task, description=what, total=total, completed=0)

    def advance(self, key: str, done: int) -> None:
        self._progress.update(self._tasks[key], completed=done)

    def finish(self, key: str, outcome: str) -> None:
        task = self._tasks[key]
        total = self._progress.tasks[task].total or 0
        self._progress.update(task, description=outcome, completed=total)

    def close(self) -> None:
        self._progress.stop()


def make_progress(stream: TextIO = sys.stderr) -> ConvertProgress:
    return RichProgress() if stream.isatty() else PlainProgress(stream)


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]
