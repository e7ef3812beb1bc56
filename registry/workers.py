"""Worker processes of one ``pier serve --workers N`` showing one another's metrics.

A scrape of ``/metrics`` lands on whichever worker accepts the connection, and each worker
counts only what it served. So the parent makes a private run folder (``run_folder``) and
names it to the workers in ``PIER_WORKERS_DIR``; each worker takes the lowest free index
there (a file lock, released by the kernel however the worker ends, so a replacement worker
takes the index of the one it replaces; on SIGHUP uvicorn starts each new worker before it
stops the old one, so the first takes index N), writes its counts there every second (a JSON file,
replaced atomically by rename) and, when scraped, adds its siblings' files to its own live
figures. A file whose process is gone is skipped. The siblings' figures are up to a second
old: with scrapes more than a second apart (Prometheus: 15 s by default) a counter never reads
lower than at the scrape before, whichever worker answers each (a lower one is a reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .metrics import Counts, Metrics

log = logging.getLogger("pier.registry")

RUN_FOLDER_ENV = "PIER_WORKERS_DIR"  # set by the parent for its workers; not a setting
PUBLISH_INTERVAL = 1.0  # seconds between a worker's snapshots


def run_folder() -> str:
    """A private folder (mode 0700) for the workers of this run; the parent removes it at exit."""
    return tempfile.mkdtemp(prefix="pier-workers-")


def remove_run_folder(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive (the workers are all ours, so rare)
        return True
    return True


class WorkerMetrics:
    """One worker's share of the run folder: its index, its snapshot, its siblings' snapshots."""

    def __init__(self, folder: str, metrics: Metrics) -> None:
        self.folder = Path(folder)
        self.metrics = metrics
        self.index: int | None = None
        self._slot: int | None = None  # the locked file descriptor that holds the index
        self._written = b""

    def start(self) -> None:
        """Take an index and label this worker's series with it (before it serves anything)."""
        self.index, self._slot = self._claim()
        self.metrics.worker = str(self.index)
        self.metrics.siblings = self.siblings
        self.publish()

    def _claim(self) -> tuple[int, int]:
        """The lowest index whose lock no live process holds: 0..N-1 for N workers."""
        for index in itertools.count():
            descriptor = os.open(self.folder / f"worker-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            return index, descriptor
        raise AssertionError("unreachable")

    @property
    def path(self) -> Path:
        return self.folder / f"worker-{self.index}.json"

    def publish(self) -> None:
        """Write this worker's counts for its siblings, unless they are what was last written
        (an idle server does not rewrite the file every second)."""
        data = self.metrics.counts().to_json()
        if data == self._written:
            return
        temporary = self.folder / f"worker-{self.index}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.path)  # a sibling reads the old file or the new, never half
        self._written = data

    async def publish_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            try:
                self.publish()
                failing = False
            except OSError as exc:
                if not failing:  # once, not every second
                    log.warning("cannot write this worker's metrics for its siblings: %s", exc)
                failing = True

    def siblings(self) -> list[Counts]:
        """The other live workers' last snapshots; those of processes that are gone are skipped."""
        found: list[Counts] = []
        for path in self.folder.glob("worker-*.json"):
            if path == self.path:
                continue
            try:
                counts = Counts.from_json(path.read_bytes())
            except FileNotFoundError:
                continue
            except Exception:  # garbled (Infinity, deep nesting, wrong types): never break /metrics
                log.warning("skipping an unreadable worker snapshot: %s", path)
                continue
            if path.name != f"worker-{counts.worker}.json":  # two files claiming one label
                log.warning("skipping a worker snapshot under another worker's name: %s", path)
                continue
            if alive(counts.pid):
                found.append(counts)
        return found

    def close(self) -> None:
        """On a clean exit: the snapshot goes at once (else skipped once the process is gone)."""
        if self._slot is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._slot)
        self._slot = None
