"""Quotas: at most so many bytes of distinct blobs per namespace (and per repository, if set).

A blob counts once in a namespace however many of its repositories link it; a push that would
link a new one past the limit is refused with ``DENIED``, naming the quota and the usage.

Usage is counted from storage (the links under the namespace, each blob's size) and kept per
process, with this process's admissions added as they happen; one lock per quota serialises
a process's admissions, and an admitted blob stays reserved through recounts until its push
settles (linked, refused or failed), so one server never overshoots. Far from the limit the
count may be up to ``RECOUNT`` seconds old; within ``NEAR`` of the limit it is counted again
before every admission, so replicas sharing a store that both know they are near overshoot
only by blobs they admit at the same moment (each replica at most the blobs it is admitting
concurrently). A replica judges nearness by its own count, though, which misses what the
others linked in the last ``RECOUNT`` seconds: together, replicas overshoot by at most what
the others admit in that window (and the blobs in flight at the moment of a count).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from oci.units import human_size
from storage_backends import PathNotFound, StorageDriver

from .. import layout
from ..errors import RegistryError
from ..inventory import bounded
from ..references import Digest
from .policy import Policies, Quota

RECOUNT = 5.0  # seconds a count is trusted far from the limit: what other replicas may add unseen
NEAR = 0.9  # past this fraction of the limit, every admission counts again


@dataclass
class Usage:
    blobs: dict[Digest, int] = field(default_factory=dict)  # distinct blobs and their sizes
    counted_at: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(self.blobs.values())


class Quotas:
    def __init__(self, driver: StorageDriver, policies: Policies) -> None:
        self.driver = driver
        self.policies = policies
        self._usage: dict[Quota, Usage] = {}
        self._pending: dict[Quota, dict[Digest, int]] = {}  # admitted, not yet linked
        self._locks: dict[Quota, asyncio.Lock] = {}
        self._sizes: dict[Digest, int] = {}  # content never changes: a size is looked up once

    @property
    def enabled(self) -> bool:
        return bool(self.policies.quotas)

    async def admit(self, repository: str, digest: Digest, size: int) -> Quota | None:
        """Count ``digest`` into ``repository``'s quotas, or refuse; the quota it would exceed."""
        for quota in self.policies.quotas_for(repository):
            lock = self._locks.setdefault(quota, asyncio.Lock())
            async with lock:
                usage = await self._current(quota, size)
                if digest in usage.blobs:
                    continue
                if usage.bytes + size > quota.limit:
                    return quota
                usage.blobs[digest] = size
                self._pending.setdefault(quota, {})[digest] = size
        return None

    def settle(self, repository: str, digest: Digest, linked: bool) -> None:
        """The push that admitted ``digest`` is over: its reservation ends, and unless the blob
        was linked, its bytes no longer count."""
        for quota in self.policies.quotas_for(repository):
            if self._pending.get(quota, {}).pop(digest, None) is None:
                continue
            usage = self._usage.get(quota)
            if not linked and usage is not None:
                usage.blobs.pop(digest, None)

    def forget(self, repository: str) -> None:
        """Something was deleted: count ``repository``'s quotas afresh at their next use."""
        for quota in self.policies.quotas_for(repository):
            self._usage.pop(quota, None)

    def refusal(self, quota: Quota, repository: str, size: int) -> RegistryError:
        used = self._usage[quota].bytes if quota in self._usage else 0
        message = (
            f"quota exceeded: {quota.label} may hold {human_size(quota.limit)}, uses {human_size(used)}; "
            f"this blob of {human_size(size)} would exceed it"
        )
        return RegistryError(
            "DENIED", {"quota": quota.scope, "limit": quota.limit, "used": used}, message=message
        )

    async def usage(self, quota: Quota) -> int:
        return (await self._current(quota, 0, force=False)).bytes

    async def _current(self, quota: Quota, adding: int, force: bool | None = None) -> Usage:
        """The usage, counted again if need be; reservations pending when a count starts or ends
        are added to it, as a push may link its blob and settle while the walk is past its folder."""
        usage = self._usage.get(quota)
        stale = usage is None or time.monotonic() - usage.counted_at > RECOUNT
        near = usage is not None and usage.bytes + adding > NEAR * quota.limit
        if force or stale or (force is None and near):
            pending = dict(self._pending.get(quota, {}))
            usage = await self.count(quota)
            usage.blobs.update(pending)
            usage.blobs.update(self._pending.get(quota, {}))
            self._usage[quota] = usage
        assert usage is not None
        return usage

    async def count(self, quota: Quota) -> Usage:
        """Every blob linked under the quota's namespace or repository, from storage."""
        started = time.monotonic()
        digests: set[Digest] = set()
        root = layout.repository(quota.scope)
        async for info in self.driver.walk(root):
            found = layout.parse_repository_file(info.path)
            if found is None or found.digest is None or found.kind not in ("layer", "revision"):
                continue
            if quota.per_repository and found.repository != quota.scope:
                continue  # a repository nested under this one's name
            digests.add(found.digest)

        async def size_of(digest: Digest) -> int | None:
            known = self._sizes.get(digest)
            if known is None:
                try:
                    known = (await self.driver.stat(layout.blob_data(digest))).size
                except PathNotFound:
                    return None  # a dead link: GC's to remove, no bytes held
                self._sizes[digest] = known
            return known

        ordered = sorted(digests, key=str)
        sizes = await bounded(size_of, ordered)
        return Usage({d: s for d, s in zip(ordered, sizes, strict=True) if s is not None}, started)
