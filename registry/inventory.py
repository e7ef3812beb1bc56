"""What the store holds, read in two walks: one of ``blobs/``, one of ``repositories/``.

GC and fsck need every blob with its size and age, and every link of every repository.
Asking per file (list each folder, stat each link) costs a round trip per file, which on
S3 is most of a GC's time; ``StorageDriver.walk`` enumerates a whole tree in a few
requests and is what this module is built on. The paths are parsed back with the
layout in ``layout.py``; anything that does not fit it is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from storage_backends import FileInfo, StorageDriver

from . import layout
from .errors import RegistryError
from .references import ALGORITHMS, Digest

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


def parse_digest(algorithm: str, hexpart: str) -> Digest | None:
    try:
        return Digest.parse(f"{algorithm}:{hexpart}")
    except RegistryError:
        return None  # a stray file: not ours to judge


async def list_blobs(driver: StorageDriver) -> dict[Digest, FileInfo]:
    """Every blob's ``data`` under ``blobs/<alg>/<hex[:2]>/<hex>/data``, with size and mtime."""
    found: dict[Digest, FileInfo] = {}
    async for info in driver.walk(layout.BLOBS):
        parts = info.path.split("/")
        if len(parts) != 5 or parts[4] != "data" or parts[1] not in ALGORITHMS:
            continue
        digest = parse_digest(parts[1], parts[3])
        if digest is not None and digest.hex[:2] == parts[2]:
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
        parts = info.path.split("/")[1:]
        split = next((i for i, part in enumerate(parts) if part.startswith("_")), 0)
        if split == 0:
            return
        name, rest = "/".join(parts[:split]), parts[split:]
        match rest:
            case ["_layers", algorithm, hexpart, "link"]:
                if digest := parse_digest(algorithm, hexpart):
                    self.layers[(name, digest)] = info.mtime
            case ["_manifests", "revisions", algorithm, hexpart, "link"]:
                if digest := parse_digest(algorithm, hexpart):
                    self.revisions[(name, digest)] = info.mtime
            case ["_manifests", "tags", tag, "current", "link"]:
                self.tags.append((name, tag))
            case ["_referrers", algorithm, hexpart, entry] if "-" in entry:
                subject, referrer = parse_digest(algorithm, hexpart), parse_digest(*entry.split("-", 1))
                if subject is not None and referrer is not None:
                    self.referrers.setdefault((name, subject), []).append((name, referrer))
            case ["_pulled", algorithm, hexpart]:
                if digest := parse_digest(algorithm, hexpart):
                    self.pulled[(name, digest)] = info.mtime
                return
            case _:
                return  # upload markers, strays
        self.names.add(name)


async def list_repositories(driver: StorageDriver) -> Repositories:
    found = Repositories()
    async for info in driver.walk(layout.REPOSITORIES):
        found.add(info)
    return found
