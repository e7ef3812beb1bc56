"""Blob upload sessions, kept entirely in storage.

A session is a folder with the bytes received so far and a small info file. Any
process sharing the store can continue it: appends are serialized by the backend's
exclusive append writer, and the digest is verified from the stored bytes. Hash
states are cached per process only to avoid re-reading what this process already
hashed; the cache is checked against the stored size before it is trusted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from oci.verify import Verifier, VerifyError
from storage_backends import FileWriter, PathNotFound, StorageDriver, WriterBusy

from . import layout
from .errors import RegistryError
from .http import ContentRange
from .references import ALGORITHMS, Digest, new_hasher
from .store import RegistryStore
from .streams import BodyTooLarge, block_size, pump, too_large

UPLOAD_ID_LENGTH = 32
COUNT_INTERVAL = 1.0  # seconds a process trusts its count of the store's sessions (one walk)
REAP_BATCH = 32  # sessions looked at concurrently
SESSIONS_RETRY_AFTER = 10  # seconds: sessions last far longer than requests


def client_id(owner: str) -> str:
    """The folder name of a client's markers: a hash, so any user name or address is a safe path."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


@dataclass
class UploadSession:
    id: str
    name: str
    algorithm: str
    size: int
    client: str = ""  # whose limit it counts against (client_id of a user or address)


class _HashCache:
    """Per-process hash states of recent sessions: (algorithm, offset) -> hasher."""

    def __init__(self, capacity: int = 512) -> None:
        self._items: OrderedDict[str, tuple[str, int, hashlib._Hash]] = OrderedDict()
        self._capacity = capacity

    def take(self, upload_id: str, algorithm: str, offset: int) -> hashlib._Hash | None:
        """A copy of the cached state if it is exactly at ``offset``, else None."""
        item = self._items.get(upload_id)
        if item is None or item[0] != algorithm or item[1] != offset:
            return None
        return item[2].copy()

    def put(self, upload_id: str, algorithm: str, offset: int, hasher: hashlib._Hash) -> None:
        self._items[upload_id] = (algorithm, offset, hasher)
        self._items.move_to_end(upload_id)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._items.pop(upload_id, None)


def _refused(count: int, limit: int, where: str) -> RegistryError:
    return RegistryError(
        "TOOMANYREQUESTS",
        f"{count} upload sessions are open {where}, the limit is {limit}: finish or cancel one first",
        headers={"Retry-After": str(SESSIONS_RETRY_AFTER)},
    )


def _range_header(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


class Uploads:
    def __init__(
        self,
        store: RegistryStore,
        *,
        max_blob_size: int | None,
        session_timeout: float,
        max_sessions: int = 0,
        max_total_sessions: int = 0,
        max_client_sessions: int = 0,
    ) -> None:
        self.max_sessions = max_sessions  # per repository; 0: unlimited
        self.max_total_sessions = max_total_sessions  # in the whole store; 0: unlimited
        self.max_client_sessions = max_client_sessions  # per client (user or address); 0: unlimited
        self.store = store
        self.driver: StorageDriver = store.driver
        self.max_blob_size = max_blob_size
        self.session_timeout = session_timeout
        self._hashes = _HashCache()
        # Asked before a blob is linked into a repository (quotas); raises to refuse it.
        self.admit: Callable[[str, Digest, int], Awaitable[None]] | None = None
        # The store's open sessions as last walked, plus this process's opens and closes since:
        # the store-wide cap costs at most one walk of every marker a second.
        self._total = 0
        self._counted_at = -COUNT_INTERVAL

    @staticmethod
    def range_header(size: int) -> str:
        return _range_header(size)

    # -- sessions ----------------------------------------------------------------
    async def start(self, name: str, algorithm: str = "sha256", owner: str = "") -> UploadSession:
        """Open a session for ``owner`` (who it counts against: a user, or an address)."""
        if algorithm not in ALGORITHMS:
            raise RegistryError("DIGEST_INVALID", f"unsupported digest algorithm: {algorithm}")
        client = client_id(owner)
        await self._check_session_limits(name, client)
        upload_id = uuid.uuid4().hex
        info = {"name": name, "algorithm": algorithm, "started": time.time(), "client": client}
        # Markers first: a session is counted before it exists, never the other way round.
        await self.driver.put_content(layout.upload_marker(name, upload_id), b"")
        await self.driver.put_content(layout.client_marker(client, upload_id), b"")
        await self.driver.put_content(layout.upload_data(upload_id), b"")
        await self.driver.put_content(layout.upload_info(upload_id), json.dumps(info).encode())
        self._total += 1
        return UploadSession(upload_id, name, algorithm, 0, client)

    async def _check_session_limits(self, name: str, client: str) -> None:
        """Per client, per repository, then in the whole store: each counts markers, and only
        at its limit looks for sessions that expired or vanished and no longer count.

        Replicas count the same markers, so the per-client and per-repository limits hold
        across them, give or take the sessions that start at the same instant; the store's
        count is up to ``COUNT_INTERVAL`` old, so there it is the sessions other processes
        opened in the last second.
        """
        if self.max_client_sessions:
            ids = await self.driver.list_children(layout.client_markers(client))
            markers = [layout.client_marker(client, upload_id) for upload_id in ids]
            await self._check_count(markers, self.max_client_sessions, "by you")
        if self.max_sessions:
            ids = await self.driver.list_children(layout.upload_markers(name))
            markers = [layout.upload_marker(name, upload_id) for upload_id in ids]
            await self._check_count(markers, self.max_sessions, "here")
        if self.max_total_sessions:
            now = time.monotonic()
            if now - self._counted_at >= COUNT_INTERVAL:  # walking every marker is costly
                self._counted_at = now
                paths = [info.path async for info in self.driver.walk(layout.UPLOAD_CLIENTS)]
                # Only at the limit are the sessions looked at, for those that no longer count.
                self._total = len(paths) if len(paths) < self.max_total_sessions else await self._reap(paths)
            if self._total >= self.max_total_sessions:
                raise _refused(self._total, self.max_total_sessions, "on this registry")

    async def _check_count(self, markers: list[str], limit: int, where: str) -> None:
        if len(markers) < limit:
            return
        open_sessions = await self._reap(markers)
        if open_sessions >= limit:
            raise _refused(open_sessions, limit, where)

    async def _reap(self, markers: list[str]) -> int:
        """How many of the markers' sessions are open; the others' markers are removed."""

        async def still_open(marker: str) -> bool:
            if await self._is_open(layout.marker_upload_id(marker)):
                return True
            await self.driver.delete(marker)  # its session expired or is gone
            return False

        alive = 0
        for batch in range(0, len(markers), REAP_BATCH):
            found = await asyncio.gather(*map(still_open, markers[batch : batch + REAP_BATCH]))
            alive += sum(found)
        return alive

    async def _is_open(self, upload_id: str) -> bool:
        """The session has its data and has not been idle too long (an expired one is removed)."""
        try:
            data = await self.driver.stat(layout.upload_data(upload_id))
        except PathNotFound:
            return False
        if time.time() - data.mtime > self.session_timeout:
            await self.cancel_id(upload_id)
            return False
        return True

    async def get(self, name: str, upload_id: str) -> UploadSession:
        unknown = RegistryError("BLOB_UPLOAD_UNKNOWN", f"unknown upload: {upload_id[:64]!r}")
        if len(upload_id) != UPLOAD_ID_LENGTH or not all(c in "0123456789abcdef" for c in upload_id):
            raise unknown
        try:
            info = json.loads(await self.driver.get_content(layout.upload_info(upload_id)))
            data = await self.driver.stat(layout.upload_data(upload_id))
        except PathNotFound:
            raise unknown from None
        if info.get("name") != name:
            raise unknown
        client = str(info.get("client", ""))
        if time.time() - data.mtime > self.session_timeout:
            await self.cancel_id(upload_id, name, client)
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "upload session expired")
        return UploadSession(upload_id, name, info.get("algorithm", "sha256"), data.size, client)

    async def cancel(self, name: str, upload_id: str) -> None:
        session = await self.get(name, upload_id)
        await self.cancel_id(upload_id, name, session.client)

    async def cancel_id(self, upload_id: str, name: str | None = None, client: str | None = None) -> None:
        """Forget a session: its bytes, its info, and its repository's and client's markers."""
        self._hashes.drop(upload_id)
        if name is None or client is None:
            try:
                info = json.loads(await self.driver.get_content(layout.upload_info(upload_id)))
                name, client = info.get("name"), info.get("client")
            except (PathNotFound, ValueError, AttributeError):
                name = client = None
        if isinstance(name, str) and name:
            await self.driver.delete(layout.upload_marker(name, upload_id))
        if isinstance(client, str) and client:
            await self.driver.delete(layout.client_marker(client, upload_id))
            self._total = max(0, self._total - 1)
        await self.driver.delete(layout.upload_dir(upload_id))

    async def purge_expired(self) -> int:
        """Delete sessions idle for longer than the timeout, and invisible leftovers of dead
        writers as old; returns how many."""
        purged = 0
        now = time.time()
        for upload_id in await self.driver.list_children(layout.UPLOADS):
            if len(upload_id) != UPLOAD_ID_LENGTH:  # the clients' markers: reaped with their sessions
                continue
            try:
                info = await self.driver.stat(layout.upload_data(upload_id))
                idle = now - info.mtime
            except PathNotFound:
                try:  # a session whose data never appeared: judge it by its folder
                    idle = now - (await self.driver.stat(layout.upload_dir(upload_id))).mtime
                except PathNotFound:
                    continue
            if idle > self.session_timeout:
                await self.cancel_id(upload_id)
                purged += 1
        # Writes of processes that died mid-request (S3: multipart uploads, billed until aborted).
        purged += await self.driver.purge_incomplete(now - self.session_timeout)
        return purged

    # -- appending ---------------------------------------------------------------
    async def _open(self, session: UploadSession) -> FileWriter:
        try:
            return await self.driver.writer(layout.upload_data(session.id), append=True)
        except PathNotFound:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "upload was completed or cancelled") from None
        except WriterBusy:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                "another request is writing to this upload",
                status=416,
                headers={"Range": _range_header(session.size)},
            ) from None

    async def _append(
        self,
        session: UploadSession,
        writer: FileWriter,
        body: AsyncIterator[bytes],
        content_range: ContentRange | None,
        content_length: int | None,
    ) -> None:
        """Append one chunk, all or nothing: a short or rejected chunk is rolled back."""
        start = writer.size
        session.size = start
        if content_range is not None and content_range.start != start:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"chunk starts at {content_range.start}, the upload has {start} bytes",
                status=416,
                headers={"Range": _range_header(start)},
            )
        if content_range is not None and content_length not in (None, content_range.length):
            raise RegistryError("SIZE_INVALID", "Content-Range and Content-Length disagree")
        hasher = self._hashes.take(session.id, session.algorithm, start)
        if hasher is None and start == 0:
            hasher = new_hasher(session.algorithm)
        limit = None if self.max_blob_size is None else self.max_blob_size - start
        expected = content_range.length if content_range is not None else content_length
        try:
            received = await pump(body, writer, hasher, limit, block_size(expected))
        except BodyTooLarge:
            await writer.cancel()
            raise too_large(self.max_blob_size or 0) from None
        except BaseException:
            await writer.cancel()
            raise
        if expected is not None and received != expected:
            await writer.cancel()
            raise RegistryError(
                "SIZE_INVALID",
                f"received {received} bytes, expected {expected}",
                headers={"Range": _range_header(start)},
            )
        session.size = start + received
        if hasher is not None:
            self._hashes.put(session.id, session.algorithm, session.size, hasher)
        else:
            self._hashes.drop(session.id)

    async def append(
        self,
        session: UploadSession,
        body: AsyncIterator[bytes],
        content_range: ContentRange | None,
        content_length: int | None,
    ) -> UploadSession:
        writer = await self._open(session)
        try:
            await self._append(session, writer, body, content_range, content_length)
        finally:
            await writer.commit()
        return session

    async def finish(
        self,
        session: UploadSession,
        digest: Digest,
        body: AsyncIterator[bytes] | None,
        content_range: ContentRange | None,
        content_length: int | None,
    ) -> None:
        """Append the last chunk (if any), verify the digest, and commit the blob."""
        writer = await self._open(session)
        try:
            if body is not None:
                await self._append(session, writer, body, content_range, content_length)
            # Durable, and readable at the upload's path (S3 publishes its segment list here),
            # before the digest may be derived from storage and the bytes become a blob.
            await writer.sync()
            actual = await self._digest_of(session, digest.algorithm)
            if actual != digest:
                await writer.commit()
                await self.cancel_id(session.id, session.name, session.client)
                raise RegistryError("DIGEST_INVALID", f"uploaded content has digest {actual}, not {digest}")
            # Still holding the upload's lock: no append can slip in before the move.
            stored = (await self.driver.stat(layout.upload_data(session.id))).size
            if stored != writer.size:
                await writer.commit()
                await self.cancel_id(session.id, session.name, session.client)
                raise RegistryError(
                    "BLOB_UPLOAD_INVALID",
                    f"storage holds {stored} bytes of the upload, {writer.size} were received",
                )
            if self.admit is not None:
                try:
                    await self.admit(session.name, digest, stored)
                except RegistryError:
                    await writer.commit()
                    await self.cancel_id(session.id, session.name, session.client)
                    raise
            if await self.store.has_content(digest, stored):
                await self.driver.delete(layout.upload_data(session.id))
            else:
                await self.driver.move(layout.upload_data(session.id), layout.blob_data(digest))
            await self.store.link_blob(session.name, digest)
        finally:
            await writer.commit()
        await self.cancel_id(session.id, session.name, session.client)

    async def _digest_of(self, session: UploadSession, algorithm: str) -> Digest:
        hasher = self._hashes.take(session.id, algorithm, session.size)
        if hasher is None:
            # Another process received (part of) this upload: derive the hash from storage.
            hasher = new_hasher(algorithm)
            await pump(self.driver.reader(layout.upload_data(session.id)), None, hasher)
        return Digest(algorithm, hasher.hexdigest())

    # -- whole blobs in one request ----------------------------------------------
    async def put_monolithic(
        self, name: str, digest: Digest, body: AsyncIterator[bytes], content_length: int | None
    ) -> int:
        """``POST ?digest=``: stream straight to the blob's place, visible only if it verifies;
        its size."""
        verifier = Verifier(digest)
        if self.admit is not None and content_length is not None:
            await self.admit(name, digest, content_length)  # before the body: refuse early
        # Skipped only when a file of the announced size is there: a short one is replaced.
        exists = content_length is not None and await self.store.has_content(digest, content_length)
        writer = None if exists else await self.driver.writer(layout.blob_data(digest), size=content_length)
        try:
            received = await pump(body, writer, verifier, self.max_blob_size, block_size(content_length))
        except BaseException as exc:
            if writer is not None:
                await writer.cancel()
            if isinstance(exc, BodyTooLarge):
                raise too_large(self.max_blob_size or 0) from None
            raise
        try:
            if content_length is not None and received != content_length:
                raise RegistryError(
                    "SIZE_INVALID", f"received {received} bytes, Content-Length said {content_length}"
                )
            try:
                verifier.check()
            except VerifyError as exc:
                detail = f"uploaded content has digest {exc.actual}, not {digest}"
                raise RegistryError("DIGEST_INVALID", detail) from None
            if self.admit is not None:
                await self.admit(name, digest, received)
        except RegistryError:
            if writer is not None:
                await writer.cancel()
            raise
        if writer is not None:
            await writer.commit()
        await self.store.link_blob(name, digest)
        return received
