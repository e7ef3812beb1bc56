"""Webhooks: push, pull and delete events, queued in storage, delivered until received.

An event is written to its endpoint's queue (``layout.event_queue``: a folder of files of
JSON lines, named by time: the events that arrived while the previous file was written)
before the request that caused it is answered, so no acknowledged change is ever lost to a
crash or a restart. A dispatcher per endpoint posts the queue in order, in batches, in
distribution's envelope (existing receivers work) or as a CloudEvents batch; it retries
with exponential backoff while the receiver fails, and deletes events once answered 2xx.
Of several replicas on one store, the one holding the endpoint's lease delivers; the
lease lasts ``LEASE`` seconds and is renewed as it works, and given up on shutdown.
Delivery is at least once: receivers deduplicate by event ``id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage_backends import PathNotFound, StorageDriver

from . import layout
from .config import ConfigError, Settings, parse_duration
from .group_commit import GroupCommit

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("pier.notifications")
ACTIONS = ("push", "pull", "delete")
LEASE = 30.0  # seconds a dispatcher's claim on an endpoint lasts without renewal
BATCH = 100  # events per delivery
IDLE_POLL = 2.0  # seconds between looks at a queue no local request woke
DISTRIBUTION_TYPE = "application/vnd.docker.distribution.events.v1+json"
CLOUDEVENTS_TYPE = "application/cloudevents-batch+json"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass
class Endpoint:
    name: str
    url: str
    actions: frozenset[str] = frozenset(ACTIONS)
    repositories: tuple[str, ...] = ("*",)  # globs
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 5.0
    format: str = "distribution"  # or cloudevents
    backoff: float = 1.0  # first retry delay; doubles up to max_backoff
    max_backoff: float = 300.0

    def wants(self, action: str, repository: str) -> bool:
        return action in self.actions and any(fnmatch.fnmatchcase(repository, g) for g in self.repositories)

    @property
    def queue(self) -> str:
        return layout.event_queue(self.name)

    @property
    def lease(self) -> str:
        return layout.event_lease(self.name)


def parse_endpoints(text: str) -> list[Endpoint]:
    """The ``notifications`` setting: a JSON list of endpoint tables; refused whole if wrong."""
    if not text.strip():
        return []
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"notifications: not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ConfigError("notifications: expected a list of endpoints")
    endpoints = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ConfigError(f"notifications[{i}]: needs a url")
        unknown = set(entry) - {f for f in Endpoint.__dataclass_fields__ if f != "actions"} - {"events"}
        if unknown:
            raise ConfigError(f"notifications[{i}]: unknown keys {sorted(unknown)}")
        name = str(entry.get("name") or f"endpoint-{i}")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"notifications[{i}]: name {name!r} must be lowercase letters, digits, - or _")
        if not entry["url"].startswith(("http://", "https://")):
            raise ConfigError(f"notifications[{i}]: url must be http(s)")
        actions = frozenset(entry.get("events") or ACTIONS)
        if not actions <= set(ACTIONS):
            raise ConfigError(f"notifications[{i}]: events must be among {', '.join(ACTIONS)}")
        form = entry.get("format", "distribution")
        if form not in ("distribution", "cloudevents"):
            raise ConfigError(f"notifications[{i}]: format must be distribution or cloudevents")
        repositories = entry.get("repositories") or ["*"]
        headers = entry.get("headers") or {}
        if not isinstance(repositories, list) or not isinstance(headers, dict):
            raise ConfigError(f"notifications[{i}]: repositories is a list, headers a table")
        endpoints.append(
            Endpoint(
                name=name,
                url=entry["url"],
                actions=actions,
                repositories=tuple(str(r) for r in repositories),
                headers={str(k): str(v) for k, v in headers.items()},
                timeout=parse_duration(entry.get("timeout", 5.0)),
                format=form,
                backoff=parse_duration(entry.get("backoff", 1.0)),
                max_backoff=parse_duration(entry.get("max_backoff", 300.0)),
            )
        )
    if len({e.name for e in endpoints}) != len(endpoints):
        raise ConfigError("notifications: endpoint names must differ")
    return endpoints


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}Z"


class Notifier:
    def __init__(self, endpoints: list[Endpoint], driver: StorageDriver, instance: str) -> None:
        self.endpoints = endpoints
        self.driver = driver
        self.instance = instance
        self._wake = {e.name: asyncio.Event() for e in endpoints}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None  # aiohttp is imported with the first event
        self._commits: GroupCommit[tuple[list[Endpoint], str]] = GroupCommit(self._write_batch)

    @classmethod
    def from_settings(cls, settings: Settings, driver: StorageDriver) -> Notifier:
        return cls(parse_endpoints(settings.notifications), driver, f"{socket.gethostname()}:{settings.port}")

    # -- recording ----------------------------------------------------------------------
    async def publish(
        self, action: str, repository: str, target: dict[str, Any], request: dict[str, Any]
    ) -> None:
        """Queue one event for every endpoint that wants it; returns once it is stored.

        Group commit: events that arrive while a write is in flight go together in the next
        file, so sixteen concurrent pulls cost one or two storage writes, not sixteen.
        """
        wanting = [e for e in self.endpoints if e.wants(action, repository)]
        if not wanting:
            return
        now = time.time()
        event = {
            "id": str(uuid.uuid4()),
            "timestamp": _timestamp(now),
            "action": action,
            "target": {"repository": repository, **target},
            "request": request,
            "actor": {"name": request.pop("user", "")},
            "source": {"addr": self.instance, "instanceID": self.instance},
        }
        await self._commits.add((wanting, json.dumps(event)))

    async def _write_batch(self, batch: list[tuple[list[Endpoint], str]]) -> None:
        lines: dict[str, list[str]] = {}
        for wanting, line in batch:
            for endpoint in wanting:
                lines.setdefault(endpoint.name, []).append(line)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        await asyncio.gather(
            *(
                self.driver.put_content(layout.event_batch(queue, name), "\n".join(found).encode())
                for queue, found in lines.items()
            )
        )
        for queue in lines:
            self._wake[queue].set()

    # -- delivering ---------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._dispatch_forever(e)) for e in self.endpoints]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for endpoint in self.endpoints:  # the next replica need not wait for the lease to lapse
            with contextlib.suppress(Exception):
                if (await self._lease_holder(endpoint))[0] == self.instance:
                    await self.driver.delete(endpoint.lease)
        if self._session is not None:
            await self._session.close()

    async def _lease_holder(self, endpoint: Endpoint) -> tuple[str, float]:
        try:
            data = json.loads(await self.driver.get_content(endpoint.lease))
            return str(data["owner"]), float(data["until"])
        except (PathNotFound, ValueError, KeyError, TypeError):
            return "", 0.0

    async def _hold_lease(self, endpoint: Endpoint) -> bool:
        """Take or renew the endpoint's lease; written, then read back, as storage has no CAS."""
        owner, until = await self._lease_holder(endpoint)
        if owner != self.instance and until > time.time():
            return False
        claim = {"owner": self.instance, "until": time.time() + LEASE}
        await self.driver.put_content(endpoint.lease, json.dumps(claim).encode())
        if owner != self.instance:
            await asyncio.sleep(0.5)  # another replica claiming at the same moment: last write wins
            return (await self._lease_holder(endpoint))[0] == self.instance
        return True

    async def _dispatch_forever(self, endpoint: Endpoint) -> None:
        failures = 0
        while True:
            delay = IDLE_POLL
            try:
                if await self._hold_lease(endpoint):
                    delivered = await self._deliver_batch(endpoint)
                    failures = 0
                    delay = 0.0 if delivered >= BATCH else IDLE_POLL
            except DeliveryFailed as exc:
                failures += 1
                delay = min(endpoint.max_backoff, endpoint.backoff * 2 ** (failures - 1))
                log.warning("notifying %s failed (%s); retrying in %.1f s", endpoint.name, exc, delay)
            except Exception:
                log.exception("notifying %s failed", endpoint.name)
            wake = self._wake[endpoint.name]
            if failures == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
            else:
                await asyncio.sleep(delay)  # backing off: new events wait too
            wake.clear()

    async def _deliver_batch(self, endpoint: Endpoint) -> int:
        """Post the oldest files' events (about ``BATCH``); how many events went."""
        names: list[str] = []
        events: list[dict[str, Any]] = []
        for name in sorted(await self.driver.list_children(endpoint.queue)):
            if len(events) >= BATCH:
                break
            names.append(name)
            try:
                body = await self.driver.get_content(layout.event_batch(endpoint.name, name))
            except PathNotFound:
                continue  # delivered by a replica that held the lease before
            for line in body.decode(errors="replace").splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    log.warning("dropping an unreadable event in %s/%s", endpoint.queue, name)
        if events:
            await self._post(endpoint, events)
        if names:
            await self.driver.delete_files([layout.event_batch(endpoint.name, name) for name in names])
        return len(events)

    async def _post(self, endpoint: Endpoint, events: list[dict[str, Any]]) -> None:
        if endpoint.format == "cloudevents":
            body: Any = [_cloudevent(event) for event in events]
            content_type = CLOUDEVENTS_TYPE
        else:
            body, content_type = {"events": events}, DISTRIBUTION_TYPE
        import aiohttp  # here: a server without webhooks starts without it

        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"user-agent": "pier-notifications"})
        try:
            async with self._session.post(
                endpoint.url,
                data=json.dumps(body).encode(),
                headers={**endpoint.headers, "content-type": content_type},
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout),
                allow_redirects=False,
            ) as answer:
                if not 200 <= answer.status < 300:
                    raise DeliveryFailed(f"{endpoint.url} answered {answer.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"{endpoint.url}: {type(exc).__name__} {exc}".strip()) from None


class DeliveryFailed(Exception):
    pass


def _cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    target = event["target"]
    subject = target["repository"] + (f":{target['tag']}" if target.get("tag") else "")
    return {
        "specversion": "1.0",
        "id": event["id"],
        "source": f"/pier/{event['source']['instanceID']}",
        "type": f"io.pier.registry.{event['action']}",
        "subject": subject,
        "time": event["timestamp"],
        "datacontenttype": "application/json",
        "data": event,
    }
