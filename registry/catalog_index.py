"""What the store holds, summarised in memory for people: repositories, tags, sizes, platforms.

The web UI's pages, quota usage per namespace and retention's plan read this index, never the
store: a page view costs a dictionary lookup and a sort, whatever the store's size. It is
built from two walks (``inventory``), kept current by this process's own pushes and
deletes as they happen, and rebuilt in the background every ``refresh`` seconds so that
other replicas' changes show up within that interval. A tag link's contents (its digest)
are read once and reused while the file is unchanged; a manifest's summary is computed once
per digest, as content never changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from oci.mediatypes import IMAGE_CONFIGS
from storage_backends import PathNotFound, StorageDriver

from . import layout
from .errors import RegistryError
from .inventory import bounded, list_blobs
from .manifests import ParsedManifest, parse_manifest
from .references import Digest
from .store import ManifestRecord, RegistryStore

log = logging.getLogger("pier.index")

STARTUP_DELAY = 1.0  # seconds after start before the first build
RACY_SECONDS = 2.0  # a tag link written this recently is read again: its mtime may not have ticked
MAX_SUMMARIES = 200_000
MAX_CONFIG = 1 << 20  # a config larger than this gives no platform


@dataclass
class Tag:
    name: str
    digest: Digest
    pushed: float  # when the tag was last written


@dataclass
class Repository:
    name: str
    tags: dict[str, Tag] = field(default_factory=dict)
    manifests: dict[Digest, float] = field(default_factory=dict)  # revision links and their mtimes
    blobs: set[Digest] = field(default_factory=set)  # every linked blob: layers, configs, manifests
    referrers: dict[Digest, set[Digest]] = field(default_factory=dict)  # subject -> referrers
    last_push: float = 0.0
    size: int = 0  # bytes of distinct linked blobs (what a quota counts)

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Summary:
    """A manifest at a glance: how big the image is, for which platforms, and what it is."""

    digest: Digest
    media_type: str
    size: int  # the manifest, its config and layers; for an index, every child's too
    platforms: tuple[Platform, ...]
    artifact_type: str  # the artifactType, or the config's media type for an artifact
    children: tuple[Digest, ...] = ()
    subject: Digest | None = None


def _is_image_config(media_type: str) -> bool:
    return media_type in IMAGE_CONFIGS


@dataclass
class _TagLink:
    mtime: float
    size: int
    digest: Digest


class CatalogIndex:
    def __init__(self, store: RegistryStore, refresh: float = 60.0) -> None:
        self.store = store
        self.driver: StorageDriver = store.driver
        self.refresh_interval = refresh
        self._repositories: dict[str, Repository] = {}
        self._names: list[str] = []  # sorted
        self._blob_sizes: dict[Digest, int] = {}
        self._tag_links: dict[str, _TagLink] = {}
        self._summaries: dict[Digest, Summary] = {}
        self._namespace_usage: dict[str, tuple[int, int]] | None = None  # namespaces(), until a change
        self.built_at = 0.0  # when the last full rebuild started; 0: never
        self._building: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- reading ------------------------------------------------------------------------
    async def ready(self) -> None:
        """Build the index once, on first use; later rebuilds happen in the background."""
        if self.built_at == 0.0:
            await self.rebuild()

    def names(self) -> list[str]:
        return self._names

    def get(self, name: str) -> Repository | None:
        return self._repositories.get(name)

    def blob_size(self, digest: Digest) -> int | None:
        return self._blob_sizes.get(digest)

    def namespaces(self) -> dict[str, tuple[int, int]]:
        """Each namespace: (bytes of its distinct blobs, repositories).

        Counted once per change of the index, not per call: at 10,000 repositories the count
        takes ~170 ms (a union of every repository's blobs), and the usage page asks on every view.
        """
        if self._namespace_usage is None:
            blobs: dict[str, set[Digest]] = {}
            counts: dict[str, int] = {}
            for repository in self._repositories.values():
                blobs.setdefault(repository.namespace, set()).update(repository.blobs)
                counts[repository.namespace] = counts.get(repository.namespace, 0) + 1
            self._namespace_usage = {ns: (self._size_of(found), counts[ns]) for ns, found in blobs.items()}
        return dict(self._namespace_usage)

    def _size_of(self, digests: Iterable[Digest]) -> int:
        sizes = self._blob_sizes
        return sum(sizes.get(d, 0) for d in digests)

    async def summary(self, name: str, digest: Digest) -> Summary | None:
        """The manifest's summary; None when it is not (or no longer) stored."""
        found = self._summaries.get(digest)
        if found is not None:
            return found
        try:
            record = await self.store.resolve(name, str(digest))
            body = await self.store.manifest_body(record)
            manifest = parse_manifest(body, record.media_type)
        except RegistryError:
            return None
        return await self._summarise(name, record, manifest)

    async def summaries(self, name: str, digests: Iterable[Digest]) -> dict[Digest, Summary]:
        """Summaries already made come from memory in one pass; only the others are read (a
        task for each of 5,000 known digests cost a warm page sorted by size ~100 ms)."""
        found: dict[Digest, Summary | None] = {d: self._summaries.get(d) for d in digests}
        missing = [d for d, s in found.items() if s is None]
        for digest, summary in zip(
            missing, await bounded(lambda d: self.summary(name, d), missing), strict=True
        ):
            found[digest] = summary
        return {d: s for d, s in found.items() if s is not None}

    async def _summarise(self, name: str, record: ManifestRecord, manifest: ParsedManifest) -> Summary:
        document: dict[str, Any] = manifest.document
        platforms: list[Platform] = []
        size = record.size + sum(d.size for d in manifest.blobs)
        if manifest.is_index:
            for entry in document.get("manifests", []):
                platform = entry.get("platform") if isinstance(entry, dict) else None
                if isinstance(platform, dict):
                    platforms.append(
                        Platform(
                            str(platform.get("os", "")),
                            str(platform.get("architecture", "")),
                            str(platform.get("variant", "")),
                        )
                    )
            children = await self.summaries(name, [d.digest for d in manifest.children])
            size += sum(s.size for s in children.values())
        else:
            platforms = [*await self._config_platform(name, manifest)]
        config = document.get("config")
        config_type = config.get("mediaType", "") if isinstance(config, dict) else ""
        summary = Summary(
            record.digest,
            record.media_type,
            size,
            tuple(platforms),
            str(document.get("artifactType") or "") or ("" if _is_image_config(config_type) else config_type),
            tuple(d.digest for d in manifest.children),
            manifest.subject.digest if manifest.subject is not None else None,
        )
        if len(self._summaries) >= MAX_SUMMARIES:
            self._summaries.clear()
        self._summaries[record.digest] = summary
        return summary

    async def _config_platform(self, name: str, manifest: ParsedManifest) -> list[Platform]:
        """An image's platform is in its config (linked here, verified); an artifact has none."""
        config = manifest.blobs[0] if manifest.blobs else None
        if config is None or not _is_image_config(config.media_type):
            return []
        data = await self.store.small_document(name, config.digest, MAX_CONFIG)
        if data is None or not data.get("os"):
            return []
        return [Platform(str(data["os"]), str(data.get("architecture", "")), str(data.get("variant", "")))]

    # -- keeping current ------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._rebuild_forever())

    async def close(self) -> None:
        for task in (self._task, self._building):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _rebuild_forever(self) -> None:
        """The first build right away, so the first visitor does not wait for it (3.5 s at
        10,000 repositories); after each build, the summaries of tags that have none, so the
        first sort by size does not read every manifest either."""
        await asyncio.sleep(STARTUP_DELAY)  # let the server answer its first requests first
        while True:
            try:
                await self.rebuild()
                await self.summarise_tags()
            except Exception:
                log.exception("rebuilding the catalog index failed; keeping the last one")
            await asyncio.sleep(self.refresh_interval)

    async def summarise_tags(self) -> None:
        """Summaries of every tag's manifest not yet summarised, a repository at a time."""
        for name in list(self._names):
            repository = self._repositories.get(name)
            if repository is None:
                continue
            missing = [t.digest for t in repository.tags.values() if t.digest not in self._summaries]
            if missing:
                await self.summaries(name, missing)
            else:
                await asyncio.sleep(0)  # others' turn: thousands of repositories in one loop

    async def rebuild(self) -> None:
        """Read the store again from scratch; concurrent callers share one rebuild."""
        if self._building is None or self._building.done():
            self._building = asyncio.create_task(self._rebuild())
        await asyncio.shield(self._building)

    async def _rebuild(self) -> None:
        started = time.time()
        repositories: dict[str, Repository] = {}
        tag_files: list[tuple[str, str, float, int]] = []  # repository, tag, mtime, size
        async for info in self.driver.walk(layout.REPOSITORIES):
            found = layout.parse_repository_file(info.path)
            if found is None or found.kind in ("pulled", "other"):
                continue
            repository = repositories.get(found.repository)
            if repository is None:
                repository = repositories[found.repository] = Repository(found.repository)
            digest = found.digest
            if found.kind == "layer" and digest is not None:
                repository.blobs.add(digest)
            elif found.kind == "revision" and digest is not None:
                repository.manifests[digest] = info.mtime
                repository.blobs.add(digest)
                repository.last_push = max(repository.last_push, info.mtime)
            elif found.kind == "tag":
                tag_files.append((found.repository, found.tag, info.mtime, info.size))
            elif found.kind == "referrer" and digest is not None and found.subject is not None:
                repository.referrers.setdefault(found.subject, set()).add(digest)
        blobs = await list_blobs(self.driver)

        async def tag_digest(item: tuple[str, str, float, int]) -> tuple[str, str, float, Digest] | None:
            name, tag, mtime, size = item
            path = layout.tag_link(name, tag)
            known = self._tag_links.get(path)
            if known is None or known.mtime != mtime or known.size != size or started - mtime < RACY_SECONDS:
                try:
                    raw = await self.driver.get_content(path)
                    known = _TagLink(mtime, size, Digest.parse(raw.decode().strip()))
                except (PathNotFound, RegistryError, UnicodeDecodeError):
                    return None
                self._tag_links[path] = known
            return name, tag, mtime, known.digest

        # A link unchanged since the last rebuild is resolved here, without a task: most are.
        resolved: list[tuple[str, str, float, Digest] | None] = []
        to_read: list[tuple[str, str, float, int]] = []
        for item in tag_files:
            known = self._tag_links.get(layout.tag_link(item[0], item[1]))
            if (
                known is not None
                and (known.mtime, known.size) == (item[2], item[3])
                and started - item[2] >= RACY_SECONDS
            ):
                resolved.append((item[0], item[1], item[2], known.digest))
            else:
                to_read.append(item)
        resolved += await bounded(tag_digest, to_read)
        for found_tag in resolved:
            if found_tag is None:
                continue
            name, tag, mtime, digest = found_tag
            repository = repositories[name]
            repository.tags[tag] = Tag(tag, digest, mtime)
            repository.last_push = max(repository.last_push, mtime)
        live = {layout.tag_link(n, t) for n, t, _, _ in tag_files}
        self._tag_links = {p: v for p, v in self._tag_links.items() if p in live}
        self._blob_sizes = {digest: info.size for digest, info in blobs.items()}
        for number, repository in enumerate(repositories.values(), 1):
            repository.size = self._size_of(repository.blobs)
            if number % 1000 == 0:
                await asyncio.sleep(0)  # let page views in: 10,000 repositories take ~0.3 s
        self._repositories = repositories
        self._names = sorted(repositories)
        self._namespace_usage = None
        self.built_at = started

    # -- this process's own changes, applied at once ----------------------------------------
    def pushed(
        self, name: str, digest: Digest, size: int, tags: list[str], blobs: Iterable[tuple[Digest, int]]
    ) -> None:
        repository = self._repositories.get(name)
        if repository is None:
            repository = self._repositories[name] = Repository(name)
            self._names = sorted(self._repositories)
        now = time.time()
        repository.manifests[digest] = now
        repository.blobs.add(digest)
        self._blob_sizes.setdefault(digest, size)
        for blob, blob_size in blobs:
            repository.blobs.add(blob)
            self._blob_sizes.setdefault(blob, blob_size)
        for tag in tags:
            repository.tags[tag] = Tag(tag, digest, now)
        repository.last_push = now
        repository.size = self._size_of(repository.blobs)
        self._namespace_usage = None

    def blob_linked(self, name: str, digest: Digest, size: int) -> None:
        repository = self._repositories.get(name)
        if repository is None:
            repository = self._repositories[name] = Repository(name)
            self._names = sorted(self._repositories)
        self._blob_sizes.setdefault(digest, size)
        if digest not in repository.blobs:
            repository.blobs.add(digest)
            repository.size += size
            self._namespace_usage = None

    def tag_deleted(self, name: str, tag: str) -> None:
        repository = self._repositories.get(name)
        if repository is not None:
            repository.tags.pop(tag, None)

    def manifest_deleted(self, name: str, digest: Digest) -> None:
        repository = self._repositories.get(name)
        if repository is None:
            return
        repository.manifests.pop(digest, None)
        for tag in [t.name for t in repository.tags.values() if t.digest == digest]:
            del repository.tags[tag]

    def repository_deleted(self, name: str) -> None:
        if self._repositories.pop(name, None) is not None:
            self._names = sorted(self._repositories)
            self._namespace_usage = None
