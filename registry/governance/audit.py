"""The audit log: who pushed, moved a tag, deleted, failed to log in, and what a policy did.

An entry is stored before the request that caused it is answered, as webhook events are
(``layout.audit_batch``: files of JSON lines, one folder per UTC day), so it survives a
crash or a restart and every replica's entries land in one log. Entries that arrive while a
write is in flight go together in the next file: a burst of pushes costs a write or two.
Queries read the newest days first and stop at the limit; ``pier audit --export`` and
``GET /v2/_pier/audit?format=jsonl`` give the whole log as JSON lines.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from storage_backends import PathNotFound, StorageDriver

from .. import layout
from ..group_commit import GroupCommit

log = logging.getLogger("pier.audit")

# What an entry's ``action`` may be.
ACTIONS = (
    "push",  # a manifest stored (by tag or digest)
    "tag-move",  # a tag that pointed elsewhere now points at ``digest`` (``previous``: where it was)
    "delete",  # a manifest, tag or blob deleted through the API
    "delete-repository",
    "login-failed",
    "quota-denied",
    "immutable-denied",
    "retention-delete",
)


def _day(seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e3):03d}Z"


@dataclass(frozen=True)
class Query:
    repository: str | None = None
    user: str | None = None
    action: str | None = None
    since: float | None = None  # seconds since the epoch
    limit: int = 1000

    def matches(self, entry: dict[str, Any]) -> bool:
        return (
            (self.repository is None or entry.get("repository") == self.repository)
            and (self.user is None or entry.get("user") == self.user)
            and (self.action is None or entry.get("action") == self.action)
            and (self.since is None or entry.get("epoch", 0) >= self.since)
        )


class AuditLog:
    def __init__(self, driver: StorageDriver, enabled: bool = True) -> None:
        self.driver = driver
        self.enabled = enabled
        self._commits: GroupCommit[str] = GroupCommit(self._write_batch)

    async def record(
        self,
        action: str,
        repository: str,
        *,
        user: str = "",
        addr: str = "",
        digest: str = "",
        tag: str = "",
        previous: str = "",
        detail: str = "",
        request_id: str = "",
    ) -> None:
        """Store one entry; returns once it is durable (a no-op when the log is off)."""
        if not self.enabled:
            return
        assert action in ACTIONS, action
        now = time.time()
        entry = {
            "id": uuid.uuid4().hex,
            "time": _timestamp(now),
            "epoch": round(now, 3),
            "action": action,
            "repository": repository,
            "user": user,
            "addr": addr,
            "digest": digest,
            "tag": tag,
        }
        if previous:
            entry["previous"] = previous
        if detail:
            entry["detail"] = detail
        if request_id:
            entry["request_id"] = request_id
        await self._commits.add(json.dumps(entry))

    async def _write_batch(self, lines: list[str]) -> None:
        path = layout.audit_batch(_day(time.time()), f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}")
        await self.driver.put_content(path, "\n".join(lines).encode())

    async def entries(self, newest_first: bool = True, since: float | None = None) -> AsyncIterator[dict]:
        """Every stored entry, a day's file at a time."""
        days = sorted(await self.driver.list_children(layout.AUDIT), reverse=newest_first)
        first_day = _day(since) if since is not None else ""
        for day in days:
            if day < first_day:
                if newest_first:
                    break
                continue
            names = sorted(await self.driver.list_children(layout.audit_day(day)), reverse=newest_first)
            for name in names:
                try:
                    body = await self.driver.get_content(layout.audit_batch(day, name))
                except PathNotFound:
                    continue
                lines = body.decode(errors="replace").splitlines()
                for line in reversed(lines) if newest_first else lines:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        log.warning("skipping an unreadable audit entry in %s/%s", day, name)

    async def query(self, query: Query) -> list[dict[str, Any]]:
        """The newest ``query.limit`` entries that match, newest first."""
        found: list[dict[str, Any]] = []
        async for entry in self.entries(since=query.since):
            if query.matches(entry):
                found.append(entry)
                if len(found) >= query.limit:
                    break
        return found
