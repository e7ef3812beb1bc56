"""``pier gc``: delete blobs (and, if asked, untagged manifests) nothing references.

Everything goes through the ``StorageDriver`` interface, so it works on every backend,
and it is safe while the registry serves pushes:

* a grace period keeps whatever was written recently (blob data, layer links, revision
  links): an upload not yet referenced by its manifest survives;
* a handshake with ``RegistryStore.put_manifest`` closes the race where a client re-uses
  an old unreferenced blob (HEAD says it exists) while GC decides to delete it. GC marks,
  writes a marker ``_gc/doomed/<run>`` naming every candidate, marks again from scratch
  and deletes only what is still unreferenced; it writes its run id to ``_gc/swept`` before
  it removes the marker. The server reads ``_gc/swept`` before it checks the manifest's
  references, writes its revision link, lists the markers, and reads ``_gc/swept`` again.
  Either GC's second mark sees the new link, or the server sees the marker, or that GC has
  finished and the server sees ``_gc/swept`` changed and checks the references again; in
  the last two it refuses the manifest if something it needs is gone (the client pushes the
  blob again): never none of the three. This needs storage where a read or list sees every
  write and delete that finished before it (local disks, S3 since 2020).

With ``--delete-untagged`` and a grace period of zero a manifest pushed by tag during GC
may be deleted between its revision link and its tag: keep a grace period on a live registry.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from oci.units import human_size
from storage_backends import FileInfo, PathNotFound, StorageDriver

from . import layout
from .errors import RegistryError
from .inventory import Manifest, Repositories, bounded, list_blobs, list_repositories
from .manifests import ParsedManifest, parse_manifest
from .references import Digest

DEFAULT_GRACE = 3600.0
# Past this since its markers were written, a GC stops deleting: servers ignore markers
# older than DOOMED_MARKER_LIFETIME, so the handshake no longer protects what it deletes.
SWEEP_DEADLINE = 30 * 60.0
SWEEP_BATCH = 1000  # files per delete_files call (S3's DeleteObjects limit)


class GCError(Exception):
    """The store cannot be collected safely (a reachable manifest that does not parse)."""


async def _stat(driver: StorageDriver, path: str) -> FileInfo | None:
    try:
        return await driver.stat(path)
    except PathNotFound:
        return None


@dataclass
class Marked:
    """What one mark phase found: reachable content, the manifests to keep, and the links."""

    links: Repositories
    blobs: set[Digest] = field(default_factory=set)
    kept: set[Manifest] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)

    @property
    def revisions(self) -> dict[Manifest, float]:
        return self.links.revisions

    @property
    def referrers(self) -> dict[Manifest, list[Manifest]]:
        return self.links.referrers


async def tag_targets(driver: StorageDriver, tags: list[tuple[str, str]]) -> list[Manifest]:
    """What each tag points at; tags deleted meanwhile or holding garbage (fsck's business) are skipped."""

    async def target(item: tuple[str, str]) -> Manifest | None:
        name, tag = item
        try:
            raw = await driver.get_content(layout.tag_link(name, tag))
            return name, Digest.parse(raw.decode().strip())
        except (PathNotFound, RegistryError, UnicodeDecodeError):
            return None

    return [found for found in await bounded(target, tags) if found is not None]


async def mark(driver: StorageDriver, *, delete_untagged: bool, grace: float) -> Marked:
    """Everything reachable, read from scratch: tags, revision links, referrers."""
    now, marked = time.time(), Marked(await list_repositories(driver))
    roots = await tag_targets(driver, marked.links.tags)
    roots += [m for m, mtime in marked.revisions.items() if not delete_untagged or now - mtime < grace]

    async def media_type(name: str, digest: Digest) -> str | None:
        try:
            link = json.loads(await driver.get_content(layout.revision_link(name, digest)))
        except (PathNotFound, ValueError):
            return None
        return link.get("mediaType") if isinstance(link, dict) else None

    parsed: dict[Digest, ParsedManifest | None] = {}  # a manifest in many repositories is read once

    async def read(name: str, digest: Digest) -> ParsedManifest | None:
        if digest in parsed:
            return parsed[digest]
        try:
            body = await driver.get_content(layout.blob_data(digest))
        except PathNotFound:
            parsed[digest] = None
            return None
        try:
            # The body's own mediaType (or its shape) says what it references; the revision
            # link's type is fetched only for the rare body that does not parse without it.
            manifest = parse_manifest(body, None)
        except RegistryError:
            try:
                manifest = parse_manifest(body, await media_type(name, digest))
            except RegistryError as exc:
                raise GCError(f"manifest {name}@{digest} does not parse ({exc}): not collecting") from None
        parsed[digest] = manifest
        return manifest

    async def visit(item: Manifest) -> list[Manifest]:
        name, digest = item
        marked.blobs.add(digest)
        manifest = await read(name, digest)
        if manifest is None:
            marked.unreadable.append(f"{name}@{digest}")
            return []
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
    for run in await driver.list_children(layout.GC_DOOMED):
        info = await _stat(driver, layout.doomed_marker(run))
        if info is not None and now - info.mtime >= layout.DOOMED_MARKER_LIFETIME:
            await driver.delete(layout.doomed_marker(run))
            report.markers_cleared += 1


def _candidates(blobs: dict[Digest, FileInfo], marked: Marked, grace: float) -> set[Digest]:
    now = time.time()
    young_links = {d for (_, d), mtime in marked.links.layers.items() if now - mtime < grace}
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
    only: set[Digest] | None = None,
) -> Report:
    """Mark, write markers, mark again, sweep what is still unreferenced, purge dead links.

    ``only`` limits the sweep to those blobs (a mirror evicting what its evicted manifests
    referenced); the handshake protects them as it protects the rest.
    """
    report = Report()
    if not dry_run:
        await _clear_stale_markers(driver, report)
    first = await mark(driver, delete_untagged=delete_untagged, grace=grace)
    report.warnings += [
        f"manifest {m} has no content: what it references is not kept" for m in first.unreadable
    ]
    blobs = await list_blobs(driver)
    candidates = _candidates(blobs, first, grace)
    if only is not None:
        candidates &= only
    doomed = {m for m in first.revisions if m not in first.kept} if delete_untagged else set()

    if dry_run:
        report.manifests = len(doomed)
        report.details += [f"would delete manifest {n}@{d}" for n, d in sorted(doomed)]
        for digest in sorted(candidates):
            report.blobs, report.bytes = report.blobs + 1, report.bytes + blobs[digest].size
            report.details.append(f"would free blob {digest} ({human_size(blobs[digest].size)})")
        dead = [(n, d) for n, d in first.links.layers if d not in blobs or d in candidates]
        report.links = len(dead)
        report.details += [f"would purge link {n} -> {d}" for n, d in sorted(dead)]
        return report

    run = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
    marker = layout.doomed_marker(run)
    written = time.monotonic()  # before the marker: servers judge markers by their age
    stop = "stopped sweeping: marking is too old, run gc again"

    def late() -> bool:
        if time.monotonic() - written > deadline:
            report.stopped = stop
        return bool(report.stopped)

    async def delete(paths: list[str]) -> int:
        """Delete in batches, checking the deadline before each; how many were deleted."""
        done = 0
        for start in range(0, len(paths), SWEEP_BATCH):
            if late():
                break
            await driver.delete_files(paths[start : start + SWEEP_BATCH])
            done = min(len(paths), start + SWEEP_BATCH)
        return done

    try:
        await driver.put_content(marker, layout.encode_doomed(sorted({*candidates, *(d for _, d in doomed)})))
        second = await mark(driver, delete_untagged=delete_untagged, grace=grace)
        # Listed again after the marker: a blob written since the first listing is young now.
        blobs = await list_blobs(driver)
        candidates &= _candidates(blobs, second, grace)
        now = time.time()
        doomed = {
            m
            for m in doomed
            if m in second.revisions and m not in second.kept and now - second.revisions[m] >= grace
        }
        referred_by: dict[Manifest, list[Digest]] = {}
        for (_, subject), referrers in second.referrers.items():
            for referrer in referrers:
                referred_by.setdefault(referrer, []).append(subject)

        # A manifest: its referrer entries first, its revision link last (what makes it exist).
        manifests = sorted(doomed)
        files = [
            path
            for name, digest in manifests
            for path in (
                *(layout.referrer_entry(name, s, digest) for s in referred_by.get((name, digest), [])),
                layout.revision_link(name, digest),
            )
        ]
        if await delete(files) == len(files):
            report.manifests = len(manifests)
            report.details += [f"deleted manifest {n}@{d}" for n, d in manifests]

        freed = sorted(candidates)
        freed = freed[: await delete([layout.blob_data(d) for d in freed])]
        for digest in freed:
            report.blobs, report.bytes = report.blobs + 1, report.bytes + blobs[digest].size
            report.details.append(f"freed blob {digest} ({human_size(blobs[digest].size)})")

        present = set(blobs) - set(freed)
        dead = sorted(m for m in second.links.layers if m[1] not in present)
        dead = dead[: await delete([layout.layer_link(n, d) for n, d in dead])]
        if dead:
            # An upload may have committed one of those blobs again meanwhile: its link stays.
            back = await list_blobs(driver)
            for name, digest in dead:
                if digest in back:
                    await driver.put_content(layout.layer_link(name, digest), str(digest).encode())
                else:
                    report.links += 1
                    report.details.append(f"purged link {name} -> {digest}")
    finally:
        # Before the marker goes: a server that no longer sees it sees this change instead.
        # If this write fails the marker stays (servers refuse its digests until it expires).
        await driver.put_content(layout.GC_SWEPT, run.encode())
        await driver.delete(marker)
    await add_gc_run(driver, report.bytes)
    return report


async def read_gc_totals(driver: StorageDriver) -> dict[str, float]:
    try:
        data = json.loads(await driver.get_content(layout.GC_TOTALS))
    except (PathNotFound, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def add_gc_run(driver: StorageDriver, freed_bytes: int) -> None:
    """Add one GC run to the store's totals (read-modify-write: a concurrent run may lose one)."""
    totals = await read_gc_totals(driver)
    totals = {
        "runs": int(totals.get("runs", 0)) + 1,
        "freed_bytes": int(totals.get("freed_bytes", 0)) + freed_bytes,
        "last_run": time.time(),
    }
    await driver.put_content(layout.GC_TOTALS, json.dumps(totals).encode())
