"""The registry's content model on top of any storage driver, written once.

Blobs are stored once by digest and linked into repositories; manifests are blobs
with a revision link that records their media type; tags are links to a manifest
digest; referrers are descriptors filed under their subject. See ``layout``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from oci import jsonsafe
from storage_backends import PathNotFound, StorageDriver

from . import layout
from .errors import RegistryError
from .manifests import OCI_INDEX, Descriptor, ParsedManifest, parse_manifest
from .references import Digest, is_digest, validate_tag

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ManifestRecord:
    digest: Digest
    media_type: str
    size: int


class _ContentCache:
    """Manifest bytes by digest. Content is immutable, so a hit is always correct."""

    def __init__(self, max_bytes: int) -> None:
        self._items: OrderedDict[Digest, bytes] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes

    def get(self, digest: Digest) -> bytes | None:
        body = self._items.get(digest)
        if body is not None:
            self._items.move_to_end(digest)
        return body

    def put(self, digest: Digest, body: bytes) -> None:
        if len(body) > self._max or digest in self._items:
            return
        self._items[digest] = body
        self._bytes += len(body)
        while self._bytes > self._max:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)


async def _map_bounded(function: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int = 32) -> list[R]:
    """``function`` over ``items``, at most ``limit`` at a time: a manifest may list
    hundreds of layers, a repository thousands of tags."""
    results: list[R] = []
    for start in range(0, len(items), limit):
        results += await asyncio.gather(*(function(item) for item in items[start : start + limit]))
    return results


class RegistryStore:
    def __init__(self, driver: StorageDriver, manifest_cache_bytes: int = 64 << 20) -> None:
        self.driver = driver
        self._manifests = _ContentCache(manifest_cache_bytes)
        self._doomed: dict[str, frozenset[str]] = {}  # GC marker file -> its digests

    # -- blobs -------------------------------------------------------------------
    async def blob_size(self, name: str, digest: Digest) -> int:
        """Size of a blob linked into ``name``; ``BLOB_UNKNOWN`` otherwise."""
        try:
            _, info = await asyncio.gather(
                self.driver.stat(layout.layer_link(name, digest)),
                self.driver.stat(layout.blob_data(digest)),
            )
        except PathNotFound:
            raise RegistryError("BLOB_UNKNOWN", str(digest)) from None
        return info.size

    def read_blob(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.driver.reader(layout.blob_data(digest), offset, length)

    async def open_blob(self, digest: Digest) -> BinaryIO | None:
        """The blob's file, where storage is a local disk (for ``sendfile``); None elsewhere."""
        try:
            return await self.driver.open_local(layout.blob_data(digest))
        except PathNotFound:
            raise RegistryError("BLOB_UNKNOWN", str(digest)) from None

    async def blob_url(self, digest: Digest, expires: float) -> str | None:
        """A short-lived URL of the blob's bytes in the storage itself, where it has one (S3)."""
        return await self.driver.url_for(layout.blob_data(digest), expires)

    async def small_document(self, name: str, digest: Digest, limit: int) -> dict[str, Any] | None:
        """A JSON object blob (an image's config) linked into ``name``, verified, of at most
        ``limit`` bytes as stored; None otherwise. Descriptors are the pusher's word: neither
        the size they declare nor a digest outside this repository is believed."""
        try:
            size = await self.blob_size(name, digest)
        except RegistryError:
            return None
        if size > limit:
            return None
        try:
            body = await self.driver.get_content(layout.blob_data(digest))
        except PathNotFound:
            return None
        if len(body) != size or Digest.of(body, digest.algorithm) != digest:
            return None
        try:
            document = jsonsafe.loads(body)
        except jsonsafe.UntrustedJSONError:
            return None
        return document if isinstance(document, dict) else None

    async def has_content(self, digest: Digest, size: int | None = None) -> bool:
        """The content is stored, and whole when its ``size`` is known: a damaged (short)
        file must be written again, never trusted as a reason to skip the write."""
        try:
            info = await self.driver.stat(layout.blob_data(digest))
        except PathNotFound:
            return False
        return size is None or info.size == size

    async def link_blob(self, name: str, digest: Digest) -> None:
        await self.driver.put_content(layout.layer_link(name, digest), str(digest).encode())

    async def mount_blob(self, name: str, source: str, digest: Digest) -> bool:
        """Link a blob from ``source`` into ``name`` when ``source`` has it."""
        try:
            await self.blob_size(source, digest)
        except RegistryError:
            return False
        await self.link_blob(name, digest)
        return True

    async def delete_blob(self, name: str, digest: Digest) -> None:
        if not await self.driver.exists(layout.layer_link(name, digest)):
            raise RegistryError("BLOB_UNKNOWN", str(digest))
        # Only the link goes; the content may serve other repositories (GC reclaims it).
        await self.driver.delete(layout.layer_dir(name, digest))

    # -- manifests ---------------------------------------------------------------
    async def resolve(self, name: str, reference: str) -> ManifestRecord:
        """Turn a tag or digest into the manifest it names in ``name``."""
        if is_digest(reference):
            digest = Digest.parse(reference)
        else:
            validate_tag(reference)
            try:
                raw = await self.driver.get_content(layout.tag_link(name, reference))
            except PathNotFound:
                raise RegistryError("MANIFEST_UNKNOWN", f"unknown tag: {reference}") from None
            digest = Digest.parse(raw.decode().strip())
        try:
            link = json.loads(await self.driver.get_content(layout.revision_link(name, digest)))
        except PathNotFound:
            raise RegistryError("MANIFEST_UNKNOWN", f"unknown manifest: {digest}") from None
        return ManifestRecord(digest, link["mediaType"], link["size"])

    async def manifest_body(self, record: ManifestRecord) -> bytes:
        body = self._manifests.get(record.digest)
        if body is None:
            try:
                body = await self.driver.get_content(layout.blob_data(record.digest))
            except PathNotFound:
                raise RegistryError("MANIFEST_UNKNOWN", str(record.digest)) from None
            if len(body) != record.size or Digest.of(body, record.digest.algorithm) != record.digest:
                # Never serve damaged bytes under a digest; a push of the manifest replaces them.
                raise RegistryError(
                    "MANIFEST_UNKNOWN", f"the stored copy of {record.digest} is damaged: push it again"
                )
            self._manifests.put(record.digest, body)
        return body

    async def put_manifest(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        tags: list[str],
        check_references: bool = True,
    ) -> tuple[Digest, ParsedManifest]:
        """Store a manifest; ``check_references=False`` for a mirror's cache, which holds
        only the blobs and children that clients pulled."""
        if not is_digest(reference):
            validate_tag(reference)
        for tag in tags:
            validate_tag(tag)
        manifest = parse_manifest(body, content_type)
        if is_digest(reference):
            expected = Digest.parse(reference)
            digest = Digest.of(body, expected.algorithm)
            if digest != expected:
                raise RegistryError("DIGEST_INVALID", f"manifest digest is {digest}, not {expected}")
        else:
            tags = [reference, *tags]
            digest = Digest.of(body)
        swept = b""
        if check_references:
            swept = await self._last_gc_sweep()  # before the check: see the handshake below
            await self._check_references(name, manifest)

        if not await self.has_content(digest, len(body)):
            await self.driver.put_content(layout.blob_data(digest), body)
        link = {"mediaType": manifest.media_type, "size": len(body)}
        revision = layout.revision_link(name, digest)
        existed = await self.driver.exists(revision)
        await self.driver.put_content(revision, json.dumps(link).encode())
        if manifest.subject is not None:
            descriptor = {"mediaType": manifest.media_type, "digest": str(digest), "size": len(body)}
            if manifest.artifact_type:
                descriptor["artifactType"] = manifest.artifact_type
            if manifest.annotations:
                descriptor["annotations"] = manifest.annotations
            await self.driver.put_content(
                layout.referrer_entry(name, manifest.subject.digest, digest),
                json.dumps(descriptor).encode(),
            )
        # The server's half of GC's handshake (see registry.gc): the revision link is written,
        # now look for doomed markers. A GC whose second mark missed this link either still
        # has its marker (we see it and refuse) or has finished sweeping since the check above,
        # and then _gc/swept changed and a second check finds what it deleted.
        try:
            doomed = await self._doomed_digests()
            referenced = {digest, *(d.digest for d in manifest.blobs), *(d.digest for d in manifest.children)}
            hit = sorted(str(d) for d in referenced if str(d) in doomed)
            if hit:
                raise RegistryError(
                    "MANIFEST_BLOB_UNKNOWN", f"{hit[0]} is being garbage-collected: push it again"
                )
            if check_references and await self._last_gc_sweep() != swept:
                await self._check_references(name, manifest)
                if not await self.has_content(digest, len(body)):
                    raise RegistryError(
                        "MANIFEST_BLOB_UNKNOWN", f"{digest} was garbage-collected: push it again"
                    )
        except RegistryError:
            if not existed:  # an older revision link is someone else's: GC's mark saw it
                if manifest.subject is not None:
                    await self.driver.delete(layout.referrer_entry(name, manifest.subject.digest, digest))
                await self.driver.delete(layout.revision_dir(name, digest))
            raise
        for tag in tags:
            await self.driver.put_content(layout.tag_link(name, tag), str(digest).encode())
        self._manifests.put(digest, body)
        return digest, manifest

    async def _last_gc_sweep(self) -> bytes:
        try:
            return await self.driver.get_content(layout.GC_SWEPT)
        except PathNotFound:
            return b""

    async def _doomed_digests(self) -> frozenset[str]:
        """Digests a running GC may delete: one list, empty but while a GC sweeps.

        Marker files are written once and never change, so each is read once per process.
        """
        names = await self.driver.list_children(layout.GC_DOOMED)
        self._doomed = {name: self._doomed[name] for name in names if name in self._doomed}
        found: set[str] = set()
        for name in names:
            path = layout.doomed_marker(name)
            try:
                info = await self.driver.stat(path)
                if time.time() - info.mtime >= layout.DOOMED_MARKER_LIFETIME:
                    continue  # left by a crashed GC
                if name not in self._doomed:
                    self._doomed[name] = layout.decode_doomed(await self.driver.get_content(path))
            except PathNotFound:
                continue  # that GC is done
            found |= self._doomed[name]
        return frozenset(found)

    async def _check_references(self, name: str, manifest: ParsedManifest) -> None:
        async def check_blob(descriptor: Descriptor) -> None:
            if descriptor.urls:
                return  # foreign / non-distributable layer: fetched from its URLs
            try:
                size = await self.blob_size(name, descriptor.digest)
            except RegistryError:
                raise RegistryError("MANIFEST_BLOB_UNKNOWN", str(descriptor.digest)) from None
            if size != descriptor.size:
                raise RegistryError(
                    "MANIFEST_INVALID",
                    f"{descriptor.digest} has size {size}, the manifest says {descriptor.size}",
                )

        async def check_child(descriptor: Descriptor) -> None:
            if not await self.driver.exists(layout.revision_link(name, descriptor.digest)):
                # The spec: a manifest rejected for a missing reference MUST get MANIFEST_BLOB_UNKNOWN.
                raise RegistryError(
                    "MANIFEST_BLOB_UNKNOWN", f"index references unknown manifest {descriptor.digest}"
                )

        await _map_bounded(check_blob, manifest.blobs)
        await _map_bounded(check_child, manifest.children)

    async def delete_manifest(self, name: str, reference: str) -> None:
        if not is_digest(reference):
            validate_tag(reference)
            if not await self.driver.exists(layout.tag_link(name, reference)):
                raise RegistryError("MANIFEST_UNKNOWN", f"unknown tag: {reference}")
            await self.driver.delete(layout.tag_dir(name, reference))
            return
        record = await self.resolve(name, reference)
        body = await self.manifest_body(record)
        subject = parse_manifest(body, record.media_type).subject
        for tag in await self.tags(name):
            try:
                target = await self.driver.get_content(layout.tag_link(name, tag))
            except PathNotFound:
                continue
            if target.decode().strip() == str(record.digest):
                await self.driver.delete(layout.tag_dir(name, tag))
        if subject is not None:
            await self.driver.delete(layout.referrer_entry(name, subject.digest, record.digest))
        await self.driver.delete(layout.revision_dir(name, record.digest))

    async def delete_repository(self, name: str) -> None:
        """Its manifests and tags first, so a reader never sees tags without their manifests."""
        for folder in reversed(layout.repository_contents(name)):
            await self.driver.delete(folder)

    async def tag_age(self, name: str, tag: str) -> float | None:
        """Seconds since the tag was last written (a mirror: last checked upstream)."""
        try:
            info = await self.driver.stat(layout.tag_link(name, tag))
        except PathNotFound:
            return None
        return max(0.0, time.time() - info.mtime)

    async def set_tag(self, name: str, tag: str, digest: Digest) -> None:
        await self.driver.put_content(layout.tag_link(name, tag), str(digest).encode())

    # -- listings ----------------------------------------------------------------
    async def repository_exists(self, name: str) -> bool:
        """True for a repository, false for a mere prefix of other repositories' names."""
        return layout.is_repository(await self.driver.list_children(layout.repository(name)))

    async def tags(self, name: str) -> list[str]:
        """Tags whose link exists: a folder without one is a tag being written or deleted."""
        candidates = await self.driver.list_children(layout.tags_dir(name))
        present = await _map_bounded(lambda tag: self.driver.exists(layout.tag_link(name, tag)), candidates)
        return sorted(tag for tag, ok in zip(candidates, present, strict=True) if ok)

    async def referrers(self, name: str, subject: Digest, artifact_type: str | None) -> dict:
        directory = layout.referrers_dir(name, subject)
        entries = await self.driver.list_children(directory)

        async def read(entry: str) -> bytes | None:
            try:
                return await self.driver.get_content(layout.child(directory, entry))
            except PathNotFound:
                return None  # deleted while listing

        descriptors = []
        for body in await _map_bounded(read, entries):
            if body is None:
                continue
            descriptor = json.loads(body)
            if artifact_type is None or descriptor.get("artifactType") == artifact_type:
                descriptors.append(descriptor)
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}

    async def repositories(self) -> list[str]:
        """Every repository name, sorted (see ``layout.is_repository``)."""
        found: list[str] = []

        async def walk(prefix: str) -> None:
            children = await self.driver.list_children(layout.repositories_folder(prefix))
            if prefix and layout.is_repository(children):
                found.append(prefix)
            for child in children:
                if layout.is_name_component(child):
                    await walk(f"{prefix}/{child}" if prefix else child)

        await walk("")
        return sorted(found)
