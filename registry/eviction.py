"""Keep a mirror's cache under ``proxy_cache_size``: evict the least recently pulled.

Only mirrored repositories are ever evicted, a manifest at a time, oldest last pull first
(``_pulled`` markers, written as clients pull), until what the evicted manifests alone
referenced brings the cache under 90% of the limit. Their blobs then go through GC's
sweep, restricted to them and with its handshake, so a blob that a local repository (or
a push in flight) also needs is never deleted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage_backends import PathNotFound, StorageDriver

from . import layout
from .errors import RegistryError
from .gc import Report, collect
from .inventory import Manifest, bounded, list_blobs, list_repositories
from .manifests import parse_manifest
from .references import Digest

log = logging.getLogger("pier.mirror")
LOW_WATER = 0.9  # evict down to this share of the limit, so one pull does not start another round


@dataclass
class Eviction:
    usage: int  # bytes of mirrored content before
    manifests: list[Manifest]
    swept: Report | None = None


async def _references(driver: StorageDriver, manifests: list[Manifest]) -> dict[Manifest, set[Digest]]:
    """Each manifest's own blob and what it references (unreadable ones reference nothing)."""

    async def read(item: Manifest) -> set[Digest]:
        name, digest = item
        found = {digest}
        try:
            body = await driver.get_content(layout.blob_data(digest))
            link = json.loads(await driver.get_content(layout.revision_link(name, digest)))
            parsed = parse_manifest(body, link.get("mediaType") if isinstance(link, dict) else None)
        except (PathNotFound, ValueError, RegistryError):
            return found
        return found | {d.digest for d in parsed.blobs} | {d.digest for d in parsed.children}

    return dict(zip(manifests, await bounded(read, manifests), strict=True))


async def evict(driver: StorageDriver, mirrored: Callable[[str], bool], limit: int) -> Eviction:
    blobs = await list_blobs(driver)
    repos = await list_repositories(driver)
    cached = [m for m in repos.revisions if mirrored(m[0])]
    linked = {d for n, d in repos.layers if mirrored(n)} | {d for _, d in cached}
    if sum(blobs[d].size for d in linked if d in blobs) <= limit:  # cheap: no manifest read
        return Eviction(sum(blobs[d].size for d in linked if d in blobs), [])
    # Exactly: what the cached manifests reference (a link may outlive an evicted manifest).
    references = await _references(driver, list(repos.revisions))
    users: dict[Digest, set[Manifest]] = {}
    for item, digests in references.items():
        for digest in digests:
            users.setdefault(digest, set()).add(item)
    # Blobs a local repository links (a push in flight: its manifest is not there yet) stay.
    local = {d for n, d in repos.layers if not mirrored(n)}
    content = {d for item in cached for d in references[item]}
    # Blobs fetched by digest alone, which no manifest references: the first to go.
    loose = {d for d in linked if d not in users and d not in local and d in blobs}
    usage = sum(blobs[d].size for d in content | loose if d in blobs)
    if usage <= limit:
        return Eviction(usage, [])

    goal, evicted = usage - int(limit * LOW_WATER), []
    freeable = set(loose)
    freed = sum(blobs[d].size for d in loose)
    for item in sorted(cached, key=lambda m: repos.pulled.get(m, repos.revisions[m])):
        if freed >= goal:
            break
        evicted.append(item)
        for digest in references[item]:
            users[digest].discard(item)
            if not users[digest] and digest in content and digest in blobs and digest not in freeable | local:
                freeable.add(digest)
                freed += blobs[digest].size

    gone = set(evicted)
    tags = [(n, t) for n, t in repos.tags if mirrored(n)]

    async def untag(item: tuple[str, str]) -> None:
        name, tag = item
        try:
            target = Digest.parse((await driver.get_content(layout.tag_link(name, tag))).decode().strip())
        except (PathNotFound, RegistryError, UnicodeDecodeError):
            return
        if (name, target) in gone:
            await driver.delete(layout.tag_dir(name, tag))

    await bounded(untag, tags)
    await driver.delete_files(
        [path for n, d in evicted for path in (layout.revision_link(n, d), layout.pulled_marker(n, d))]
    )
    swept = await collect(driver, grace=0.0, only=freeable)
    log.info(
        "mirror cache at %d bytes, over its %d: evicted %d manifests, freed %d blobs (%d bytes)",
        usage,
        limit,
        len(evicted),
        swept.blobs,
        swept.bytes,
    )
    return Eviction(usage, evicted, swept)


class Pulls:
    """When each cached manifest was last pulled, written at most every ``interval`` per process."""

    def __init__(self, driver: StorageDriver, interval: float = 600.0) -> None:
        self.driver = driver
        self.interval = interval
        self._written: dict[Manifest, float] = {}

    async def record(self, name: str, digest: Digest) -> None:
        now = time.monotonic()
        if now - self._written.get((name, digest), -self.interval) < self.interval:
            return
        self._written[(name, digest)] = now
        await self.driver.put_content(layout.pulled_marker(name, digest), b"")
