"""``pier gc``: delete blobs (and, if asked, untagged manifests) nothing references.

Everything goes through the ``StorageDriver`` interface, so it works on every backend,
and it is safe while the registry serves pushes:

* a grace period keeps whatever was written recently (blob data, layer links, revision
  links): an upload not yet referenced by its manifest survives;
* a handshake with ``RegistryStore.put_manifest`` closes the race where a client re-uses
  an old unreferenced blob (HEAD says it exists) while GC decides to delete it. GC marks,
  writes a marker ``_gc/doomed/<alg>-<hex>`` for every candidate, marks again from scratch
  and deletes only what is still unreferenced. The server writes its revision link first
  and then lists the markers. Either GC's second mark sees the new link, or the server sees
  the marker and refuses the manifest (the client pushes the blob again): never neither.
  This needs storage where a list sees every write that finished before it (local disks,
  S3 since 2020).

With ``--delete-untagged`` and a grace period of zero a manifest pushed by tag during GC
may be deleted between its revision link and its tag: keep a grace period on a live registry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from storage_backends import FileInfo, PathNotFound, StorageDriver

from . import layout
from .errors import RegistryError
from .manifests import parse_manifest
from .references import ALGORITHMS, Digest
from .store import RegistryStore

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_GRACE = 3600.0
# Past this since its markers were written, a GC stops deleting: servers ignore markers
# older than DOOMED_MARKER_LIFETIME, so the handshake no longer protects what it deletes.
SWEEP_DEADLINE = 30 * 60.0

Manifest = tuple[str, Digest]  # (repository, digest)


class GCError(Exception):
    """The store cannot be collected safely (a reachable manifest that does not parse)."""


async def bounded(function: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int = 16) -> list[R]:
    """``function`` over ``items``, ``limit`` at a time: S3 round trips dominate otherwise."""
    items = list(items)
    results: list[R] = []
    for start in range(0, len(items), limit):
        results += await asyncio.gather(*(function(item) for item in items[start : start + limit]))
    return results


def _digest(algorithm: str, hexpart: str) -> Digest | None:
    try:
        return Digest.parse(f"{algorithm}:{hexpart}")
    except RegistryError:
        return None  # a stray file: not ours to judge


async def _stat(driver: StorageDriver, path: str) -> FileInfo | None:
    try:
        return await driver.stat(path)
    except PathNotFound:
        return None


async def list_blobs(driver: StorageDriver) -> dict[Digest, FileInfo]:
    """Every blob's ``data`` under blobs/, with its size and mtime."""
    folders = [
        (algorithm, prefix)
        for algorithm in await driver.list(layout.BLOBS)
        if algorithm in ALGORITHMS
        for prefix in await driver.list(f"{layout.BLOBS}/{algorithm}")
    ]
    listed = await bounded(lambda f: driver.list(f"{layout.BLOBS}/{f[0]}/{f[1]}"), folders)
    digests = [
        digest
        for (algorithm, prefix), names in zip(folders, listed, strict=True)
        for digest in (_digest(algorithm, name) for name in names)
        if digest is not None and digest.hex[:2] == prefix
    ]
    infos = await bounded(lambda d: _stat(driver, layout.blob_data(d)), digests)
    return {d: info for d, info in zip(digests, infos, strict=True) if info is not None}


async def digests_under(driver: StorageDriver, folder: str) -> list[Digest]:
    """Digests stored as ``folder/<alg>/<hex>`` (layer links, revisions, referrer subjects)."""
    found: list[Digest] = []
    for algorithm in await driver.list(folder):
        for hexpart in await driver.list(f"{folder}/{algorithm}"):
            digest = _digest(algorithm, hexpart)
            if digest is not None:
                found.append(digest)
    return found


async def list_layer_links(store: RegistryStore, repositories: list[str]) -> dict[Manifest, float]:
    """Every ``_layers`` link: (repository, digest) -> mtime of the link."""
    links: dict[Manifest, float] = {}
    for name in repositories:
        digests = await digests_under(store.driver, layout.layers_dir(name))
        infos = await bounded(lambda d, n=name: _stat(store.driver, layout.layer_link(n, d)), digests)
        links.update({(name, d): i.mtime for d, i in zip(digests, infos, strict=True) if i is not None})
    return links


@dataclass
class Marked:
    """What one mark phase found: reachable content and the manifests to keep."""

    blobs: set[Digest] = field(default_factory=set)
    kept: set[Manifest] = field(default_factory=set)
    revisions: dict[Manifest, float] = field(default_factory=dict)  # every revision link -> mtime
    referrers: dict[Manifest, list[Manifest]] = field(default_factory=dict)  # subject -> referrers
    unreadable: list[str] = field(default_factory=list)


async def _tagged(store: RegistryStore, name: str) -> set[Digest]:
    async def target(tag: str) -> Digest | None:
        try:
            raw = await store.driver.get_content(layout.tag_link(name, tag))
            return Digest.parse(raw.decode().strip())
        except (PathNotFound, RegistryError, UnicodeDecodeError):
            return None  # deleted meanwhile, or garbage (fsck's business)

    return {d for d in await bounded(target, await store.tags(name)) if d is not None}


async def _referrers(driver: StorageDriver, name: str) -> dict[Manifest, list[Manifest]]:
    found: dict[Manifest, list[Manifest]] = {}
    root = layout.referrers_root(name)
    for subject in await digests_under(driver, root):
        for entry in await driver.list(f"{root}/{subject.algorithm}/{subject.hex}"):
            referrer = _digest(*entry.split("-", 1)) if "-" in entry else None
            if referrer is not None:
                found.setdefault((name, subject), []).append((name, referrer))
    return found


async def mark(store: RegistryStore, *, delete_untagged: bool, grace: float) -> Marked:
    """Everything reachable, read from scratch: tags, revision links, referrers."""
    driver, now, marked = store.driver, time.time(), Marked()
    roots: list[Manifest] = []
    for name in await store.repositories():
        digests = await digests_under(driver, layout.revisions_dir(name))
        infos = await bounded(lambda d, n=name: _stat(driver, layout.revision_link(n, d)), digests)
        revisions = {(name, d): i.mtime for d, i in zip(digests, infos, strict=True) if i is not None}
        marked.revisions.update(revisions)
        marked.referrers.update(await _referrers(driver, name))
        roots += [(name, d) for d in await _tagged(store, name)]
        roots += [m for m, mtime in revisions.items() if not delete_untagged or now - mtime < grace]

    async def visit(item: Manifest) -> list[Manifest]:
        name, digest = item
        marked.blobs.add(digest)
        try:
            body = await driver.get_content(layout.blob_data(digest))
        except PathNotFound:
            marked.unreadable.append(f"{name}@{digest}")
            return []
        try:
            link = json.loads(await driver.get_content(layout.revision_link(name, digest)))
            media_type = link.get("mediaType") if isinstance(link, dict) else None
        except (PathNotFound, ValueError):
            media_type = None
        try:
            manifest = parse_manifest(body, media_type)
        except RegistryError as exc:
            raise GCError(f"manifest {name}@{digest} does not parse ({exc}): not collecting") from None
        marked.blobs.update(d.digest for d in manifest.blobs)
        return [(name, d.digest) for d in manifest.children] + marked.referrers.get(item, [])

    todo = list(dict.fromkeys(roots))
    while todo:
        fresh = [m for m in dict.fromkeys(todo) if m not in marked.kept]
        marked.kept.update(fresh)
        todo = [m for found in await bounded(visit, fresh) for m in found]
    return marked


@dataclass
class Report:
    blobs: int = 0
    bytes: int = 0
    manifests: int = 0
    links: int = 0
    markers_cleared: int = 0
    stopped: str = ""  # why sweeping stopped early, if it did
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def summary(report: Report, dry_run: bool) -> str:
    size = human_size(report.bytes)
    if dry_run:
        line = (
            f"gc: would free {report.blobs} blobs ({size}), delete {report.manifests} manifests, "
            f"purge {report.links} links (dry run: nothing changed)"
        )
    else:
        line = (
            f"gc: {report.blobs} blobs ({size}) freed, {report.manifests} manifests deleted, "
            f"{report.links} links purged"
        )
    if report.markers_cleared:
        line += f", {report.markers_cleared} stale markers removed"
    return line + (f"; {report.stopped}" if report.stopped else "")


async def _clear_stale_markers(driver: StorageDriver, report: Report) -> None:
    """Markers a crashed GC left: servers already ignore them."""
    now = time.time()
    for name in await driver.list(layout.GC_DOOMED):
        info = await _stat(driver, f"{layout.GC_DOOMED}/{name}")
        if info is not None and now - info.mtime >= layout.DOOMED_MARKER_LIFETIME:
            await driver.delete(f"{layout.GC_DOOMED}/{name}")
            report.markers_cleared += 1


def _candidates(
    blobs: dict[Digest, FileInfo], marked: Marked, links: dict[Manifest, float], grace: float
) -> set[Digest]:
    now = time.time()
    young_links = {d for (_, d), mtime in links.items() if now - mtime < grace}
    return {
        d
        for d, info in blobs.items()
        if d not in marked.blobs and now - info.mtime >= grace and d not in young_links
    }


async def collect(
    driver: StorageDriver,
    *,
    dry_run: bool = False,
    delete_untagged: bool = False,
    grace: float = DEFAULT_GRACE,
    deadline: float = SWEEP_DEADLINE,
) -> Report:
    """Mark, write markers, mark again, sweep what is still unreferenced, purge dead links."""
    store, report = RegistryStore(driver), Report()
    if not dry_run:
        await _clear_stale_markers(driver, report)
    first = await mark(store, delete_untagged=delete_untagged, grace=grace)
    report.warnings += [
        f"manifest {m} has no content: what it references is not kept" for m in first.unreadable
    ]
    blobs = await list_blobs(driver)
    repositories = await store.repositories()
    links = await list_layer_links(store, repositories)
    candidates = _candidates(blobs, first, links, grace)
    doomed = {m for m in first.revisions if m not in first.kept} if delete_untagged else set()

    if dry_run:
        report.manifests = len(doomed)
        report.details += [f"would delete manifest {n}@{d}" for n, d in sorted(doomed)]
        for digest in sorted(candidates):
            report.blobs, report.bytes = report.blobs + 1, report.bytes + blobs[digest].size
            report.details.append(f"would free blob {digest} ({human_size(blobs[digest].size)})")
        dead = [(n, d) for n, d in links if d not in blobs or d in candidates]
        report.links = len(dead)
        report.details += [f"would purge link {n} -> {d}" for n, d in sorted(dead)]
        return report

    markers = sorted({*candidates, *(d for _, d in doomed)})
    written = time.monotonic()  # before the first marker: servers judge markers by their age
    try:
        await bounded(lambda d: driver.put_content(layout.doomed_marker(d), b""), markers)
        second = await mark(store, delete_untagged=delete_untagged, grace=grace)
        repositories = await store.repositories()
        links = await list_layer_links(store, repositories)
        candidates &= _candidates(blobs, second, links, grace)
        doomed = {m for m in doomed if m in second.revisions and m not in second.kept}
        deleted: set[Digest] = set()
        for item in sorted(doomed):
            if time.monotonic() - written > deadline:
                report.stopped = "stopped sweeping: marking is too old, run gc again"
                break
            if await _delete_manifest(driver, item, second, grace):
                report.manifests += 1
                report.details.append(f"deleted manifest {item[0]}@{item[1]}")
        for digest in sorted(candidates):
            if report.stopped or time.monotonic() - written > deadline:
                report.stopped = "stopped sweeping: marking is too old, run gc again"
                break
            info = await _stat(driver, layout.blob_data(digest))
            if info is None or time.time() - info.mtime < grace:
                continue  # gone already, or written again meanwhile
            await driver.delete(layout.blob_dir(digest))
            deleted.add(digest)
            report.blobs, report.bytes = report.blobs + 1, report.bytes + info.size
            report.details.append(f"freed blob {digest} ({human_size(info.size)})")
        present = set(blobs) - deleted
        for name, digest in sorted(links):
            if digest not in present and await _purge_link(driver, name, digest):
                report.links += 1
                report.details.append(f"purged link {name} -> {digest}")
    finally:
        await bounded(lambda d: driver.delete(layout.doomed_marker(d)), markers)
    return report


async def _delete_manifest(driver: StorageDriver, item: Manifest, marked: Marked, grace: float) -> bool:
    """Delete an untagged manifest's revision link and referrer entries, unless pushed again."""
    name, digest = item
    info = await _stat(driver, layout.revision_link(name, digest))
    if info is None or time.time() - info.mtime < grace:
        return False
    for (repository, subject), referrers in marked.referrers.items():
        if repository == name and item in referrers:
            await driver.delete(layout.referrer_entry(name, subject, digest))
    await driver.delete(layout.revision_link(name, digest).rsplit("/", 1)[0])
    return True


async def _purge_link(driver: StorageDriver, name: str, digest: Digest) -> bool:
    """Delete a layer link whose blob is gone; put it back if an upload brought the blob back."""
    if await driver.exists(layout.blob_data(digest)):
        return False
    path = layout.layer_link(name, digest)
    await driver.delete(path.rsplit("/", 1)[0])
    if await driver.exists(layout.blob_data(digest)):
        # An upload committed the blob between our check and the delete: its link must stay.
        await driver.put_content(path, str(digest).encode())
        return False
    return True
