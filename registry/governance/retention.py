"""Retention: which tags and untagged manifests the policies let go, and letting them go.

``plan`` reads the store afresh (a rebuilt ``CatalogIndex``) and the pull counts, and lists
what the first matching rule of each repository would delete; ``apply`` deletes exactly
that list, each item only if it is still what the plan saw (a tag pushed again since, or a
manifest tagged since, is left alone), and the freed blobs are then the online GC's
(``registry.gc.collect``). A dry run is the plan alone, so what it lists is what a run
deletes.

An untagged manifest is one no kept tag reaches: not tagged, not a child of a reachable
index, not a referrer (a signature, an SBOM) of a reachable manifest. It goes once its
revision is older than ``untagged_after``. Immutable and protected tags are never deleted.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

from storage_backends import PathNotFound, StorageDriver

from .. import layout
from ..catalog_index import CatalogIndex, Repository
from ..references import Digest
from .policy import Policies, RetentionRule
from .pulls import PullCount, PullStats


@dataclass(frozen=True, order=True)
class Doomed:
    repository: str
    kind: str  # "tag" or "manifest"
    name: str  # the tag, or the manifest's digest
    digest: str  # what the tag points at; the manifest's digest
    reason: str
    subject: str = ""  # a manifest's subject: its referrer entry goes with it

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Plan:
    items: list[Doomed] = field(default_factory=list)
    repositories: int = 0  # governed by a rule
    started: float = 0.0

    @property
    def tags(self) -> list[Doomed]:
        return [i for i in self.items if i.kind == "tag"]

    @property
    def manifests(self) -> list[Doomed]:
        return [i for i in self.items if i.kind == "manifest"]


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds:g}s"


async def plan(index: CatalogIndex, pulls: PullStats, policies: Policies, now: float | None = None) -> Plan:
    """What the rules would delete now, from a fresh read of the store."""
    await index.rebuild()
    totals = await pulls.totals()
    result = Plan(started=time.time() if now is None else now)
    for name in index.names():
        rule = policies.retention_rule(name)
        repository = index.get(name)
        if rule is None or repository is None:
            continue
        result.repositories += 1
        result.items += await _plan_repository(index, repository, rule, policies, totals, result.started)
    result.items.sort()
    return result


async def _plan_repository(
    index: CatalogIndex,
    repository: Repository,
    rule: RetentionRule,
    policies: Policies,
    totals: dict[tuple[str, str], PullCount],
    now: float,
) -> list[Doomed]:
    name = repository.name
    doomed: list[Doomed] = []
    kept_tags = []
    governed = []
    for tag in repository.tags.values():
        if (
            not fnmatch.fnmatchcase(tag.name, rule.tags)
            or not rule.prunes_tags
            or rule.protects(tag.name)
            or policies.immutable_rule(name, tag.name) is not None
        ):
            kept_tags.append(tag)
        else:
            governed.append(tag)
    governed.sort(key=lambda t: (t.pushed, t.name), reverse=True)  # newest first
    for position, tag in enumerate(governed):
        if rule.keep_last is not None and position < rule.keep_last:
            kept_tags.append(tag)
            continue
        if rule.keep_pulled_within is not None:
            pulled = max(
                totals.get((name, tag.name), PullCount()).last,
                totals.get((name, str(tag.digest)), PullCount()).last,
            )
            if now - max(pulled, tag.pushed) < rule.keep_pulled_within:
                kept_tags.append(tag)
                continue
        reasons = []
        if rule.keep_last is not None:
            reasons.append(f"not among the last {rule.keep_last} tags matching {rule.tags}")
        if rule.keep_pulled_within is not None:
            reasons.append(f"not pushed or pulled within {_days(rule.keep_pulled_within)}")
        doomed.append(Doomed(name, "tag", tag.name, str(tag.digest), "; ".join(reasons)))
    if rule.untagged_after is not None:
        reachable = await _reachable(index, repository, [t.digest for t in kept_tags])
        for digest, written in repository.manifests.items():
            if digest in reachable or now - written < rule.untagged_after:
                continue
            reason = f"untagged for more than {_days(rule.untagged_after)}"
            summary = await index.summary(name, digest)
            subject = str(summary.subject) if summary is not None and summary.subject else ""
            doomed.append(Doomed(name, "manifest", str(digest), str(digest), reason, subject))
    return doomed


async def _reachable(index: CatalogIndex, repository: Repository, roots: list[Digest]) -> set[Digest]:
    """Kept tags' manifests, their indexes' children, and every referrer of what is reached."""
    reached: set[Digest] = set()
    todo = list(roots)
    while todo:
        fresh = [d for d in dict.fromkeys(todo) if d not in reached]
        reached.update(fresh)
        summaries = await index.summaries(repository.name, fresh)
        todo = []
        for digest in fresh:
            summary = summaries.get(digest)
            if summary is not None:
                todo += summary.children
            todo += repository.referrers.get(digest, ())
    return reached


@contextlib.asynccontextmanager
async def doomed(driver: StorageDriver, digests: set[str]) -> AsyncIterator[None]:
    """GC's handshake with manifest pushes (``registry.gc``), for the manifests retention is about
    to delete: while the marker is there a push that references one of them (an index naming an
    untagged child) is refused, and one that finished before it is seen by the next plan."""
    if not digests:
        yield
        return
    run = f"{int(time.time())}-{uuid.uuid4().hex[:12]}-retention"
    marker = layout.doomed_marker(run)
    await driver.put_content(marker, layout.encode_doomed(Digest.parse(d) for d in sorted(digests)))
    try:
        yield
    finally:
        await driver.put_content(layout.GC_SWEPT, run.encode())  # before the marker goes, as GC does
        await driver.delete(marker)


async def apply(driver: StorageDriver, planned: Plan) -> list[Doomed]:
    """Delete what ``planned`` lists that is still as it saw it; what was deleted."""
    deleted: list[Doomed] = []
    for item in planned.items:
        if item.kind == "tag" and await _delete_tag(driver, item):
            deleted.append(item)
    for item in planned.items:
        if item.kind == "manifest" and await _delete_untagged(driver, item):
            deleted.append(item)
    return deleted


async def _delete_tag(driver: StorageDriver, item: Doomed) -> bool:
    try:
        current = (await driver.get_content(layout.tag_link(item.repository, item.name))).decode().strip()
    except PathNotFound:
        return False
    if current != item.digest:
        return False  # pushed again since the plan
    await driver.delete(layout.tag_dir(item.repository, item.name))
    return True


async def _delete_untagged(driver: StorageDriver, item: Doomed) -> bool:
    digest = Digest.parse(item.digest)
    for tag in await driver.list_children(layout.tags_dir(item.repository)):
        try:
            target = (await driver.get_content(layout.tag_link(item.repository, tag))).decode().strip()
        except PathNotFound:
            continue
        if target == item.digest:
            return False  # tagged since the plan
    if not await driver.exists(layout.revision_link(item.repository, digest)):
        return False
    if item.subject:
        entry = layout.referrer_entry(item.repository, Digest.parse(item.subject), digest)
        if await driver.exists(entry):
            await driver.delete(entry)
    await driver.delete(layout.revision_dir(item.repository, digest))
    return True
