"""What the store holds, read in two walks: one of ``blobs/``, one of ``repositories/``.

GC and fsck need every blob with its size and age, and every link of every repository.
Asking per file (list each folder, stat each link) costs a round trip per file, which on
S3 is most of a GC's time; ``StorageDriver.walk`` enumerates a whole tree in a few
requests and is what this module is built on. The paths are parsed back by ``layout``;
anything that does not fit it is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from storage_backends import FileInfo, StorageDriver

from . import layout
from .references import Digest

T = TypeVar("T")
R = TypeVar("R")

Manifest = tuple[str, Digest]  # (repository, digest)


async def bounded(function: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int = 32) -> list[R]:
    """``function`` over ``items``, at most ``limit`` running at once, results in order.

    Storage round trips (S3's tens of milliseconds) dominate otherwise; ``limit`` stays
    within the S3 driver's connection pool.
    """
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await function(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


async def list_blobs(driver: StorageDriver) -> dict[Digest, FileInfo]:
    """Every blob's ``data`` (``layout.blob_data``), with size and mtime."""
    found: dict[Digest, FileInfo] = {}
    async for info in driver.walk(layout.BLOBS):
        digest = layout.parse_blob_data(info.path)
        if digest is not None:
            found[digest] = info
    return found


@dataclass
class Repositories:
    """Every link under ``repositories/``, with the mtime of the link where it matters."""

    names: set[str] = field(default_factory=set)
    revisions: dict[Manifest, float] = field(default_factory=dict)
    layers: dict[Manifest, float] = field(default_factory=dict)
    tags: list[tuple[str, str]] = field(default_factory=list)  # (repository, tag)
    referrers: dict[Manifest, list[Manifest]] = field(default_factory=dict)  # subject -> referrers
    pulled: dict[Manifest, float] = field(default_factory=dict)  # a mirror's manifests: last pull

    def add(self, info: FileInfo) -> None:
        found = layout.parse_repository_file(info.path)
        if found is None:
            return
        name, digest = found.repository, found.digest
        match found.kind:
            case "layer" if digest is not None:
                self.layers[(name, digest)] = info.mtime
            case "revision" if digest is not None:
                self.revisions[(name, digest)] = info.mtime
            case "tag":
                self.tags.append((name, found.tag))
            case "referrer" if digest is not None and found.subject is not None:
                self.referrers.setdefault((name, found.subject), []).append((name, digest))
            case "pulled":
                if digest is not None:
                    self.pulled[(name, digest)] = info.mtime
                return  # a mirror's marker: no repository by itself
            case "other":
                return  # upload markers, strays
        self.names.add(name)


async def list_repositories(driver: StorageDriver) -> Repositories:
    found = Repositories()
    async for info in driver.walk(layout.REPOSITORIES):
        found.add(info)
    return found
