"""Transfer progress as docker shows it: one line per blob, live on a terminal, plain in logs.

The transfer code calls ``report(digest, state, done, total)``; states are
``downloading``/``uploading`` (bytes moving), and ``exists``, ``mounted``, ``done``,
``pushed`` (finished). On a terminal each blob gets a live ``rich`` bar with its size and
speed; otherwise one line is printed when a blob starts moving and one when it ends.
Sizes are in docker's decimal units on both (rich's columns are decimal by default).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from .text import human_size

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

Report = Callable[[str, str, int, int], None]
MOVING = frozenset({"downloading", "uploading"})


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class PlainReport:
    """Log-friendly lines: when a blob starts to move and when it is finished."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, digest: str, state: str, done: int, total: int) -> None:
        with self.lock:
            if state in MOVING:
                if digest not in self.started:
                    self.started[digest] = time.monotonic()
                    print(f"{_short(digest)}: {state} ({human_size(total)})", file=self.stream, flush=True)
                return
            elapsed = time.monotonic() - self.started.pop(digest, time.monotonic())
            speed = f", {human_size(int(total / elapsed))}/s" if elapsed > 0.05 else ""
            print(f"{_short(digest)}: {state} ({human_size(total)}{speed})", file=self.stream, flush=True)


class LiveReport:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.lock = threading.Lock()

    def __call__(self, digest: str, state: str, done: int, total: int) -> None:
        with self.lock:
            task = self.tasks.get(digest)
            if task is None:
                task = self.progress.add_task(_short(digest), total=total or None, state=state)
                self.tasks[digest] = task
            self.progress.update(task, completed=done, total=total or None, state=state)


@contextmanager
def transfer_progress(quiet: bool, stream: TextIO | None = None) -> Iterator[Report | None]:
    """The report function for a command: live bars on a terminal, lines otherwise, nothing if quiet."""
    if quiet:
        yield None
        return
    stream = stream or sys.stdout
    if not stream.isatty():
        yield PlainReport(stream)
        return
    from rich.console import Console  # only for a terminal: rich takes a tenth of a second to import
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        TextColumn("{task.fields[state]:<11}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=Console(file=stream), transient=False) as progress:
        yield LiveReport(progress)
