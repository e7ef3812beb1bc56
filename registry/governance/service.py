"""The governance of one server process: the policies, the state they need, and the actions that
several front ends share (the API's handlers, the web UI, ``pier retention``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from storage_backends import PathNotFound

from .. import layout
from ..catalog_index import CatalogIndex
from ..errors import RegistryError
from ..gc import collect, summary
from ..manifests import MAX_JSON_DEPTH as MAX_DEPTH
from ..manifests import parse_manifest
from ..references import Digest, is_digest
from ..store import RegistryStore
from .audit import AuditLog
from .policy import Policies
from .pulls import PullStats
from .quotas import Quotas
from .retention import Doomed, Plan, apply, doomed, plan

log = logging.getLogger("pier.governance")

OVERRIDE = "immutable"  # ?override=immutable: an admin deleting an immutable tag
LOGIN_FAILURES_KEPT = 10  # audit entries per address and minute for failed logins
TAG_LOCKS = 64  # pushes of tags hashing alike wait for each other


@dataclass(frozen=True)
class Actor:
    """Who did something, from where, for the audit log."""

    user: str = ""  # "" for anonymous
    addr: str = ""
    request_id: str = ""


SYSTEM = Actor("pier (policy)")


class QuotaExceeded(RegistryError):
    def __init__(self, error: RegistryError, repository: str, digest: Digest) -> None:
        super().__init__("DENIED", error.detail, message=error.message)
        self.repository = repository
        self.digest = digest


class Governance:
    def __init__(
        self,
        store: RegistryStore,
        policies: Policies,
        *,
        audit: bool = True,
        index_refresh: float = 60.0,
        pull_stats_interval: float = 10.0,
        retention_interval: float = 0.0,
    ) -> None:
        self.store = store
        self.policies = policies
        self.index = CatalogIndex(store, index_refresh)
        self.quotas = Quotas(store.driver, policies)
        self.audit = AuditLog(store.driver, audit)
        self.pulls = PullStats(store.driver, pull_stats_interval)
        self.retention_interval = retention_interval
        self._scheduler: asyncio.Task[None] | None = None
        self.open = False  # set for a registry without users: everyone may do everything
        self._login_failures: dict[str, tuple[float, int, int]] = {}  # addr -> (window, recorded, dropped)
        self._tag_locks = [asyncio.Lock() for _ in range(TAG_LOCKS)]

    def start(self) -> None:
        self.index.start()
        self.pulls.start()
        if self.retention_interval > 0 and self.policies.retention:
            self._scheduler = asyncio.create_task(self._retention_forever())

    async def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        await self.index.close()
        with contextlib.suppress(Exception):
            await self.pulls.close()

    def is_admin(self, account: str) -> bool:
        """On an open registry (no users) everyone is: there is nobody else to ask."""
        return self.open or account in self.policies.admins

    async def login_failed(
        self, user: str, addr: str, detail: str, request_id: str = "", repository: str = ""
    ) -> None:
        """A failed login, recorded at most ``LOGIN_FAILURES_KEPT`` times a minute per address:
        a flood of bad passwords must not flood the log (the next entry says how many were not)."""
        now = time.monotonic()
        window, count, dropped = self._login_failures.get(addr, (now, 0, 0))
        if now - window > 60.0:
            window, count = now, 0
        if count >= LOGIN_FAILURES_KEPT:
            self._login_failures[addr] = (window, count, dropped + 1)
            return
        if len(self._login_failures) > 10_000:
            self._login_failures.clear()
        self._login_failures[addr] = (window, count + 1, 0)
        if dropped:
            detail += f" ({dropped} more failed logins from this address were not recorded)"
        await self.audit.record(
            "login-failed", repository, user=user[:256], addr=addr, detail=detail, request_id=request_id
        )

    # -- quotas -----------------------------------------------------------------------
    async def admit_blob(self, repository: str, digest: Digest, size: int) -> None:
        """Raise ``QuotaExceeded`` when linking ``digest`` would take ``repository`` past a quota."""
        if not self.quotas.enabled:
            return
        quota = await self.quotas.admit(repository, digest, size)
        if quota is not None:
            raise QuotaExceeded(self.quotas.refusal(quota, repository, size), repository, digest)

    @contextlib.contextmanager
    def linking(self, repository: str, digest: Digest) -> Iterator[None]:
        """Around a push that may admit ``digest``: its quota reservation ends with the push."""
        try:
            yield
        except BaseException:
            self.quotas.settle(repository, digest, linked=False)
            raise
        self.quotas.settle(repository, digest, linked=True)

    async def quota_denied(self, actor: Actor, error: QuotaExceeded) -> None:
        await self._record(
            "quota-denied", error.repository, actor, digest=str(error.digest), detail=error.message
        )

    # -- immutable tags -----------------------------------------------------------------
    def mark(self, repository: str, tag: str) -> str:
        """``immutable``, ``protected`` (by a retention rule) or ``""``: for people, in the UI."""
        if self.policies.immutable_rule(repository, tag) is not None:
            return "immutable"
        rule = self.policies.retention_rule(repository)
        return "protected" if rule is not None and rule.protects(tag) else ""

    async def tag_target(self, repository: str, tag: str) -> str:
        try:
            return (await self.store.driver.get_content(layout.tag_link(repository, tag))).decode().strip()
        except PathNotFound:
            return ""

    @contextlib.asynccontextmanager
    async def tags_locked(self, repository: str, tags: list[str]) -> AsyncIterator[None]:
        """One push at a time per tag in this process: what ``check_tags`` saw holds until it is written."""
        async with contextlib.AsyncExitStack() as stack:
            for stripe in sorted({hash((repository, tag)) % TAG_LOCKS for tag in tags}):
                await stack.enter_async_context(self._tag_locks[stripe])
            yield

    async def check_tags(
        self, actor: Actor, repository: str, tags: list[str], digest: Digest
    ) -> dict[str, str]:
        """Refuse to move an immutable tag; where each tag pointed before (``""``: nowhere)."""
        previous = {}
        for tag in tags:
            before = await self.tag_target(repository, tag)
            previous[tag] = before
            rule = self.policies.immutable_rule(repository, tag)
            if rule is not None and before and before != str(digest):
                message = (
                    f"tag {tag} is immutable (rule {rule.repositories}:{rule.tags}) and points at {before}: "
                    "push under a new tag"
                )
                await self._record(
                    "immutable-denied", repository, actor, digest=str(digest), tag=tag, detail=message
                )
                raise RegistryError("DENIED", {"tag": tag, "current": before}, message=message)
        return previous

    async def pushed(
        self, actor: Actor, repository: str, digest: Digest, tags: list[str], previous: dict[str, str]
    ) -> None:
        if not tags:
            await self._record("push", repository, actor, digest=str(digest))
        for tag in tags:
            before = previous.get(tag, "")
            if before and before != str(digest):
                await self._record(
                    "tag-move", repository, actor, digest=str(digest), tag=tag, previous=before
                )
            else:
                await self._record("push", repository, actor, digest=str(digest), tag=tag)

    async def check_delete(self, actor: Actor, repository: str, reference: str, override: bool) -> None:
        """An immutable tag, or a manifest one points at, is deleted only by an admin who says so."""
        if not self.policies.immutable:
            return
        if is_digest(reference):  # from storage: another replica's tags are not in the index yet
            tags = await self._tags_pointing_at(repository, reference)
        else:
            tags = [reference]
        immutable = [t for t in tags if self.policies.immutable_rule(repository, t) is not None]
        if not immutable:
            return
        if override and self.is_admin(actor.user):
            return
        how = (
            "an admin may delete it with ?override=immutable"
            if not override
            else f"{actor.user or 'anonymous'} is not an admin"
        )
        message = f"tag {immutable[0]} is immutable: {how}"
        await self._record("immutable-denied", repository, actor, tag=immutable[0], detail=message)
        raise RegistryError("DENIED", {"tag": immutable[0]}, message=message)

    async def check_blob_delete(self, actor: Actor, repository: str, digest: str, override: bool) -> None:
        """A blob an immutable tag's image uses is unlinked only by an admin who says so: the
        tag would still resolve, to an image that can no longer be pulled."""
        if not self.policies.immutable or (override and self.is_admin(actor.user)):
            return
        for tag in await self.store.tags(repository):
            if self.policies.immutable_rule(repository, tag) is None:
                continue
            if digest in await self._blobs_of(repository, tag):
                message = f"{digest} is part of immutable tag {tag}: an admin may override it"
                await self._record(
                    "immutable-denied", repository, actor, digest=digest, tag=tag, detail=message
                )
                raise RegistryError("DENIED", {"tag": tag}, message=message)

    async def _blobs_of(self, repository: str, reference: str) -> set[str]:
        """The blobs of the image ``reference`` names, and of an index's children."""
        found: set[str] = set()
        todo = [reference]
        for _ in range(MAX_DEPTH):
            children = []
            for ref in todo:
                try:
                    record = await self.store.resolve(repository, ref)
                    manifest = parse_manifest(await self.store.manifest_body(record), record.media_type)
                except RegistryError:
                    continue
                found.update(str(d.digest) for d in manifest.blobs)
                children += [str(d.digest) for d in manifest.children]
            if not children:
                break
            todo = children
        return found

    async def _tags_pointing_at(self, repository: str, digest: str) -> list[str]:
        return [
            t for t in await self.store.tags(repository) if await self.tag_target(repository, t) == digest
        ]

    # -- deletes ------------------------------------------------------------------------
    async def deleted(self, actor: Actor, repository: str, reference: str, kind: str = "manifest") -> None:
        self.quotas.forget(repository)
        if kind == "blob":
            await self._record("delete", repository, actor, digest=reference, detail="blob")
            return
        if is_digest(reference):
            self.index.manifest_deleted(repository, Digest.parse(reference))
            await self._record("delete", repository, actor, digest=reference)
        else:
            self.index.tag_deleted(repository, reference)
            await self._record("delete", repository, actor, tag=reference)

    async def delete_tag(self, actor: Actor, repository: str, tag: str, override: bool = False) -> None:
        """What ``DELETE /v2/<name>/manifests/<tag>`` does, for the web UI."""
        async with self.tags_locked(repository, [tag]):
            await self.check_delete(actor, repository, tag, override)
            await self.store.delete_manifest(repository, tag)
        await self.deleted(actor, repository, tag)

    async def delete_repository(self, actor: Actor, repository: str, override: bool = False) -> int:
        """Every tag, manifest, link and referrer of ``repository`` (not of names nested under it);
        the blobs are then GC's. How many tags went."""
        if not await self.store.repository_exists(repository):
            raise RegistryError("NAME_UNKNOWN", repository)
        tags = await self.store.tags(repository)
        immutable = [t for t in tags if self.policies.immutable_rule(repository, t) is not None]
        if immutable and not (override and self.is_admin(actor.user)):
            message = f"{repository} has immutable tags ({', '.join(immutable[:3])}): an admin must override"
            await self._record("immutable-denied", repository, actor, tag=immutable[0], detail=message)
            raise RegistryError("DENIED", {"tags": immutable[:10]}, message=message)
        await self.store.delete_repository(repository)
        self.index.repository_deleted(repository)
        self.quotas.forget(repository)
        await self._record("delete-repository", repository, actor, detail=f"{len(tags)} tags")
        return len(tags)

    # -- retention ----------------------------------------------------------------------
    async def retention_plan(self) -> Plan:
        return await plan(self.index, self.pulls, self.policies)

    async def run_retention(self, actor: Actor = SYSTEM) -> tuple[Plan, list[Doomed]]:
        planned = await self.retention_plan()
        manifests = {i.digest for i in planned.items if i.kind == "manifest"}
        async with doomed(self.store.driver, manifests):
            if manifests:  # planned again under the marker: what a push reached since stays
                confirmed = set((await self.retention_plan()).items)
                kept = [i for i in planned.items if i.kind == "tag" or i in confirmed]
                planned = Plan(kept, planned.repositories, planned.started)
            deleted = await apply(self.store.driver, planned)
        for item in deleted:
            self.quotas.forget(item.repository)
            if item.kind == "tag":
                self.index.tag_deleted(item.repository, item.name)
                tag, digest = item.name, item.digest
            else:
                self.index.manifest_deleted(item.repository, Digest.parse(item.digest))
                tag, digest = "", item.digest
            await self._record(
                "retention-delete", item.repository, actor, digest=digest, tag=tag, detail=item.reason
            )
        return planned, deleted

    async def _retention_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.retention_interval, 60.0))
            try:
                if await self._take_retention_turn():
                    _, deleted = await self.run_retention()
                    log.info("retention deleted %d tags and manifests", len(deleted))
                    if deleted:  # their blobs go to the online GC, with its usual grace period
                        report = await collect(self.store.driver)
                        log.info("%s", summary(report, dry_run=False))
            except Exception:
                log.exception("retention failed; trying again at the next interval")

    async def _take_retention_turn(self) -> bool:
        """Replicas share a store: the one that finds the last run old enough runs it."""
        driver = self.store.driver
        try:
            last = float(json.loads(await driver.get_content(layout.RETENTION_LAST_RUN))["started"])
        except (PathNotFound, ValueError, KeyError, TypeError):
            last = 0.0
        if time.time() - last < self.retention_interval:
            return False
        await driver.put_content(layout.RETENTION_LAST_RUN, json.dumps({"started": time.time()}).encode())
        return True

    async def _record(self, action: str, repository: str, actor: Actor, **fields: str) -> None:
        await self.audit.record(
            action, repository, user=actor.user, addr=actor.addr, request_id=actor.request_id, **fields
        )
