"""Layers unpacked in worker processes, beside the one the pull streams into.

Unpacking a layer is mostly Python work per tar entry, which one process does on one core
at a time (the GIL), and each layer goes to a directory of its own: so layers whose blobs
are already on disk are unpacked in other processes, in parallel. Workers are started
with ``spawn`` (the puller has threads, which ``fork`` must not copy) as soon as a pull
knows it has layers to unpack, so their start-up overlaps the downloads.

A worker's error comes back as its message and is raised here as ``LayerFailed``: the
user sees the same one line either way.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from ..errors import PierError
from .layer_store import LayerStore, verified


class LayerFailed(PierError):
    """A layer a worker process could not unpack; the message is the worker's."""


def _unpack(home: str, diff_id: str, blob: str, media_type: str, digest: str) -> str | None:
    """In the worker: unpack one stored blob; its error's message, or None."""
    try:
        with open(blob, "rb") as stream:
            LayerStore(Path(home)).unpack(diff_id, verified(stream, digest), media_type, digest)
    except PierError as exc:
        return str(exc)
    except OSError as exc:
        return f"layer {digest}: cannot unpack: {exc}"
    return None


def _ready() -> None:
    """A first task: the worker has started and imported what it needs."""


def worker_count() -> int:
    """Processes besides this one: one per core past the first (none on one core)."""
    return max(0, (os.cpu_count() or 1) - 1)


class Unpackers:
    def __init__(self, home: Path, processes: int) -> None:
        self.home = home
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        self._warm: list[Future[None]] = [self._pool.submit(_ready) for _ in range(processes)]

    def unpack(self, diff_id: str, blob: Path, media_type: str, digest: str) -> None:
        failed = self._pool.submit(_unpack, str(self.home), diff_id, str(blob), media_type, digest).result()
        if failed is not None:
            raise LayerFailed(failed)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
