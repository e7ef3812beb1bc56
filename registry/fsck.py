"""``pier fsck``: find corrupt and missing content, and quarantine corrupt blobs.

Content is addressed by digest, so a blob whose bytes no longer hash to its path is
wrong for every client that pulls it; ``--repair`` moves it to ``_quarantine/`` (with a
note) so it is never served again and a client can push the right bytes. Missing
content (a manifest or layer gone from blobs/, a tag or link pointing at nothing) cannot
be repaired here: it is reported so an operator can re-push it. Only the
``StorageDriver`` interface is used, so it checks every backend alike.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from oci.units import human_size
from storage_backends import FileInfo, PathNotFound, StorageDriver

from . import layout
from .errors import RegistryError
from .inventory import Manifest, bounded, list_blobs, list_repositories
from .manifests import parse_manifest
from .references import Digest


@dataclass
class Report:
    blobs: int = 0
    bytes: int = 0
    manifests: int = 0
    problems: list[str] = field(default_factory=list)
    quarantined: list[Digest] = field(default_factory=list)

    def summary(self) -> str:
        found = f"{len(self.problems)} problems" if self.problems else "no problems"
        size = human_size(self.bytes)
        line = f"fsck: {self.blobs} blobs ({size}) verified, {self.manifests} manifests, {found}"
        return line + (f", {len(self.quarantined)} blobs quarantined" if self.quarantined else "")


async def _hash(driver: StorageDriver, digest: Digest) -> Digest | None:
    """The digest of the blob's bytes, None if it vanished (deleted by GC meanwhile)."""
    hasher = hashlib.new(digest.algorithm)
    try:
        async for chunk in driver.reader(layout.blob_data(digest)):
            hasher.update(chunk)
    except PathNotFound:
        return None
    return Digest(digest.algorithm, hasher.hexdigest())


async def quarantine(driver: StorageDriver, digest: Digest, actual: Digest) -> None:
    """Move a corrupt blob aside: a GET then answers BLOB_UNKNOWN and a push can replace it."""
    await driver.move(layout.blob_data(digest), layout.quarantine_data(digest))
    note = {"digest": str(digest), "actual": str(actual), "quarantined": time.time()}
    await driver.put_content(layout.quarantine_note(digest), json.dumps(note).encode())
    await driver.delete(layout.blob_dir(digest))


async def fsck(driver: StorageDriver, *, repair: bool = False, emit: Callable[[str], None] = print) -> Report:
    """Re-hash every blob, then check every revision, manifest reference, tag and layer link."""
    report = Report()

    def problem(line: str) -> None:
        report.problems.append(line)
        emit(line)

    blobs = await list_blobs(driver)

    async def verify(item: tuple[Digest, FileInfo]) -> None:
        digest, info = item
        actual = await _hash(driver, digest)
        if actual is None:
            return
        report.blobs, report.bytes = report.blobs + 1, report.bytes + info.size
        if actual == digest:
            return
        problem(f"corrupt blob {digest}: its content hashes to {actual}")
        if repair:
            await quarantine(driver, digest, actual)
            report.quarantined.append(digest)
            emit(f"quarantined {digest} -> {layout.quarantine_data(digest)}")

    await bounded(verify, sorted(blobs.items()), limit=8)
    present = set(blobs) - set(report.quarantined)

    async def exists(digest: Digest) -> bool:
        # Not in the listing: perhaps pushed since; ask before calling it missing.
        return digest in present or await driver.exists(layout.blob_data(digest))

    async def check_manifest(item: Manifest) -> None:
        name, digest = item
        try:
            link = json.loads(await driver.get_content(layout.revision_link(name, digest)))
        except PathNotFound:
            return  # a folder without its link: being deleted
        except ValueError:
            problem(f"invalid revision link {name}@{digest}")
            return
        report.manifests += 1
        try:
            body = await driver.get_content(layout.blob_data(digest))
        except PathNotFound:
            problem(f"missing manifest blob {digest}: revision of {name}")
            return
        try:
            manifest = parse_manifest(body, link.get("mediaType") if isinstance(link, dict) else None)
        except RegistryError as exc:
            problem(f"invalid manifest {name}@{digest}: {exc}")
            return
        for descriptor in manifest.blobs + manifest.children:
            if not descriptor.urls and not await exists(descriptor.digest):
                problem(f"missing blob {descriptor.digest}: referenced by {name}@{digest}")

    async def check_tag(name: str, tag: str) -> None:
        try:
            target = Digest.parse((await driver.get_content(layout.tag_link(name, tag))).decode().strip())
        except PathNotFound:
            return
        except (RegistryError, UnicodeDecodeError):
            problem(f"invalid tag link {name}:{tag}")
            return
        if not await driver.exists(layout.revision_link(name, target)):
            problem(f"dangling tag {name}:{tag} -> {target}: no such revision")

    links = await list_repositories(driver)
    await bounded(check_manifest, sorted(links.revisions))
    await bounded(lambda item: check_tag(*item), sorted(links.tags))

    async def check_layer(item: Manifest) -> None:
        if not await exists(item[1]):
            problem(f"dangling layer link {item[0]} -> {item[1]}: blob missing")

    await bounded(check_layer, sorted(links.layers))
    return report
