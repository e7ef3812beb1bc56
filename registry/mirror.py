"""Pull-through cache: serve repositories of upstream registries, keeping what passes through.

Cached content is ordinary registry content under ``<prefix>/<upstream name>``
(``docker.io/library/python``): listed, garbage-collected and fsck'd like the rest. Bare
names (docker's ``registry-mirrors``) map to the default upstream's prefix, so both ways in
share one cache.

* Manifests by digest are immutable: fetched once, then served from the cache.
* Manifests by tag are served from the cache for ``ttl`` after they were fetched or
  checked; then a ``HEAD`` upstream (free on Docker Hub) says whether the digest moved.
* When the upstream fails (unreachable, timeout, 429, 5xx) what the cache has is served,
  stale tags included, with a warning in the log.
* A blob streams to the client while it is written to storage; clients of the same blob
  follow one upstream download (per process) from a window of it in memory. The last
  byte is held back until the digest checks out, so no client ever receives a whole blob
  with the wrong content, and a bad blob is never committed. A store that is not local
  (S3) is written from a spool file (``spool.py``), so the clients are not held to the
  upload's pace; the blob is committed when the upload ends, after the clients have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from oci import jsonsafe
from oci.mediatypes import MANIFEST_ACCEPT
from oci.verify import Verifier, VerifyError
from storage_backends import StorageFull

from . import layout
from .errors import RegistryError
from .eviction import Pulls, evict
from .http import CutShort
from .lanes import Lane
from .references import Digest, is_digest, validate_tag
from .spool import Spool, SpoolFull, SpoolRoom
from .store import RegistryStore
from .upstream_client import (
    UpstreamClient,
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
    body_chunks,
)
from .upstream_config import Upstream

log = logging.getLogger("pier.mirror")
WINDOW = 64 * 1024 * 1024  # bytes of a download kept in memory for the clients following it
PIECE_SIZE = (
    4 * 1024 * 1024
)  # upstream bytes gathered, at most, before clients, the hash and storage get them
LANE_DEPTH = 8  # pieces the hash and the storage write may each be behind the reader
MAX_TAG_PAGES = 50
EVICT_MIN_INTERVAL = 5.0  # seconds between two eviction checks (each lists the whole store)


@dataclass(frozen=True)
class Route:
    """Where a requested repository comes from, and where its cache lives."""

    upstream: Upstream
    client: UpstreamClient
    remote: str  # the repository's name upstream
    local: str  # its name in this registry's storage


def as_registry_error(exc: UpstreamError, unknown: str) -> RegistryError:
    """What the client sees when the cache cannot cover for the upstream: the upstream named."""
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(unknown, str(exc))
    if isinstance(exc, UpstreamDenied):
        return RegistryError("DENIED", str(exc))
    if exc.status == 429:
        return RegistryError("TOOMANYREQUESTS", str(exc), headers={"Retry-After": "10"})
    return RegistryError("UNAVAILABLE", str(exc))


def _tag_page(upstream: Upstream, body: bytes) -> list[str]:
    """The tags of one page of an upstream's tag list; garbage is the upstream failing."""
    try:
        document = jsonsafe.loads(body)
    except jsonsafe.UntrustedJSONError as exc:
        raise UpstreamUnavailable(upstream, f"bad tag list: {exc}") from None
    tags = document.get("tags") if isinstance(document, dict) else ()
    if tags is None:  # the distribution registry's answer for a repository without tags
        return []
    if not isinstance(tags, list):
        raise UpstreamUnavailable(upstream, "bad tag list: not a JSON object with a list of tags")
    return [t for t in tags if isinstance(t, str)]


class Mirror:
    def __init__(
        self,
        store: RegistryStore,
        upstreams: list[Upstream],
        *,
        ttl: float,
        timeout: float,
        max_manifest: int,
        max_blob: int = 0,
        cache_size: int = 0,
    ) -> None:
        self.store = store
        self.max_blob = max_blob  # 0: no limit
        self.cache_size = cache_size
        self.pulls = Pulls(store.driver)
        self._evict_now = asyncio.Event()
        self.ttl = ttl
        self.max_manifest = max_manifest
        self.clients = {u.prefix: UpstreamClient(u, timeout) for u in upstreams}
        self.default = next((u for u in upstreams if u.default), None)
        self._downloads: dict[Digest, Download] = {}
        self.spool_room = SpoolRoom()
        # Hooks for metrics: (manifest|blob, hit|miss|stale) and (upstream prefix, reason).
        self.on_event: Callable[[str, str], None] = lambda kind, result: None
        self.on_upstream_error: Callable[[str, str], None] = lambda upstream, reason: None
        self.on_storage_full: Callable[[], None] = lambda: None  # a cache write ran out of space

    async def close(self) -> None:
        downloads = [d.task for d in self._downloads.values() if d.task is not None]
        for task in downloads:
            task.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)
        for client in self.clients.values():
            await client.close()

    def _upstream_failed(self, route: Route, exc: UpstreamError) -> None:
        if not isinstance(exc, UpstreamNotFound):
            self.on_upstream_error(route.upstream.prefix, str(exc.status) if exc.status else "unreachable")

    async def pulled(self, route: Route, digest: Digest) -> None:
        """Note a manifest pull, for least-recently-pulled eviction (only when there is a limit)."""
        if self.cache_size:
            await self.pulls.record(route.local, digest)

    async def evict_forever(self, interval: float = 300.0) -> None:
        """Check the cache's size after every download that filled it, and every ``interval``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._evict_now.wait(), interval)
            self._evict_now.clear()
            try:
                await evict(self.store.driver, lambda name: self.proxied(name) is not None, self.cache_size)
            except Exception:
                log.exception("mirror cache eviction failed")
            await asyncio.sleep(EVICT_MIN_INTERVAL)  # a burst of downloads: one listing, not one each

    def proxied(self, name: str) -> Upstream | None:
        """The upstream whose prefix ``name`` is under: such names are read-only here."""
        for prefix, client in self.clients.items():
            if name == prefix or name.startswith(prefix + "/"):
                return client.upstream
        return None

    async def route(self, name: str) -> Route | None:
        upstream = self.proxied(name)
        if upstream is not None:
            remote = name[len(upstream.prefix) + 1 :]
            if not remote:
                return None
            remote = upstream.upstream_name(remote)
        elif self.default is not None and not await self.store.repository_exists(name):
            # A bare name is the default upstream's, unless someone pushed it here.
            upstream, remote = self.default, self.default.upstream_name(name)
        else:
            return None
        return Route(upstream, self.clients[upstream.prefix], remote, f"{upstream.prefix}/{remote}")

    # -- manifests -------------------------------------------------------------------
    async def manifest(self, route: Route, reference: str) -> None:
        """Make the cache hold ``reference``, fresh enough; raise if it cannot, and has nothing."""
        if is_digest(reference):
            digest = Digest.parse(reference)
            if await self.store.driver.exists(layout.revision_link(route.local, digest)):
                self.on_event("manifest", "hit")
                return  # immutable: never asked again
            try:
                await self._fetch(route, reference)
            except UpstreamError as exc:
                self._upstream_failed(route, exc)
                raise as_registry_error(exc, "MANIFEST_UNKNOWN") from None
            self.on_event("manifest", "miss")
            return
        validate_tag(reference)
        age = await self.store.tag_age(route.local, reference)
        if age is not None and age < self.ttl:
            self.on_event("manifest", "hit")
            return
        try:
            if age is not None and await self._unchanged(route, reference):
                self.on_event("manifest", "hit")
                return
            await self._fetch(route, reference)
            self.on_event("manifest", "miss")
        except (UpstreamUnavailable, UpstreamDenied) as exc:
            self._upstream_failed(route, exc)
            if age is None:
                raise as_registry_error(exc, "MANIFEST_UNKNOWN") from None
            log.warning("serving %s:%s from the cache (%.0f s old): %s", route.local, reference, age, exc)
            self.on_event("manifest", "stale")
        except UpstreamNotFound as exc:
            raise as_registry_error(exc, "MANIFEST_UNKNOWN") from None

    async def _unchanged(self, route: Route, tag: str) -> bool:
        """HEAD upstream: if the tag still names the cached digest, mark it fresh again."""
        response = await route.client.send(
            "HEAD", route.remote, f"manifests/{tag}", {"accept": MANIFEST_ACCEPT}
        )
        response.release()
        cached = await self.store.resolve(route.local, tag)
        if response.headers.get("docker-content-digest") != str(cached.digest):
            return False
        await self.store.set_tag(route.local, tag, cached.digest)
        return True

    async def _fetch(self, route: Route, reference: str) -> None:
        response, body = await route.client.fetch(
            "GET", route.remote, f"manifests/{reference}", {"accept": MANIFEST_ACCEPT}, self.max_manifest
        )
        claimed = response.headers.get("docker-content-digest")
        expected = Digest.parse(reference) if is_digest(reference) else None
        if expected is None and claimed:
            try:
                expected = Digest.parse(claimed)
            except RegistryError:
                expected = None
        actual = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and actual != expected:
            raise UpstreamUnavailable(
                route.upstream, f"manifest {reference} hashes to {actual}, not {expected}"
            )
        try:
            _, manifest = await self.store.put_manifest(
                route.local, reference, body, response.headers.get("content-type"), [], check_references=False
            )
        except RegistryError as exc:
            raise UpstreamUnavailable(route.upstream, f"manifest {reference} refused: {exc}") from None
        # What the store already has (layers shared with other images) is this repository's now:
        # the upstream vouched for it, so it is served from the cache even when the upstream is down.
        digests = [d.digest for d in manifest.blobs]
        present = await asyncio.gather(*(self.store.has_content(d) for d in digests))
        await asyncio.gather(
            *(self.store.link_blob(route.local, d) for d, p in zip(digests, present, strict=True) if p)
        )

    async def tags(self, route: Route) -> list[str]:
        """The upstream's tags (every page of them), or the cached ones when it fails."""
        found: list[str] = []
        path = "tags/list"
        try:
            for _ in range(MAX_TAG_PAGES):
                response, body = await route.client.fetch("GET", route.remote, path, None, self.max_manifest)
                found += _tag_page(route.upstream, body)
                following = response.links.get("next")
                link = str(following.get("url", "")) if following is not None else ""
                if "/tags/list?" not in link:
                    break
                path = "tags/list?" + link.split("/tags/list?", 1)[1]
        except (UpstreamUnavailable, UpstreamDenied) as exc:
            self._upstream_failed(route, exc)
            cached = await self.store.tags(route.local)
            if not cached:
                raise as_registry_error(exc, "NAME_UNKNOWN") from None
            log.warning("listing the cached tags of %s: %s", route.local, exc)
            return cached
        except UpstreamNotFound as exc:
            raise as_registry_error(exc, "NAME_UNKNOWN") from None
        return sorted(set(found))

    # -- blobs -----------------------------------------------------------------------
    async def cached(self, route: Route, digest: Digest) -> bool:
        """Whether the cache has the blob for this repository.

        A blob the store holds for other repositories is linked here only once the upstream
        confirms this repository has it: a mirrored name must not read anyone's blob by digest.
        """
        linked, present = await asyncio.gather(
            self.store.driver.exists(layout.layer_link(route.local, digest)), self.store.has_content(digest)
        )
        if present and not linked:
            await self._confirm(route, digest)
            await self.store.link_blob(route.local, digest)
        if present:
            self.on_event("blob", "hit")
        return present

    async def _confirm(self, route: Route, digest: Digest) -> None:
        """``BLOB_UNKNOWN`` (or why the upstream could not say) unless it has the blob there."""
        try:
            response = await route.client.send("HEAD", route.remote, f"blobs/{digest}")
        except UpstreamError as exc:
            self._upstream_failed(route, exc)
            raise as_registry_error(exc, "BLOB_UNKNOWN") from None
        response.release()

    async def upstream_size(self, route: Route, digest: Digest) -> int:
        """A blob's size, from a download in progress or a ``HEAD`` upstream (no download)."""
        download = self._downloads.get(digest)
        if download is not None and download.size is not None:
            return download.size
        try:
            response = await route.client.send("HEAD", route.remote, f"blobs/{digest}")
        except UpstreamError as exc:
            self._upstream_failed(route, exc)
            raise as_registry_error(exc, "BLOB_UNKNOWN") from None
        response.release()
        length = response.headers.get("content-length", "")
        if not length.isdigit():
            raise as_registry_error(
                UpstreamUnavailable(route.upstream, f"HEAD of {digest} gave no size"), "BLOB_UNKNOWN"
            )
        return int(length)

    async def download(self, route: Route, digest: Digest) -> Download | None:
        """The running download of ``digest`` (joined), or a new one; ready once its size is known.

        None: the blob arrived in the store meanwhile, and is served from there.
        """
        download = self._downloads.get(digest)
        if download is None or download.failed:
            if await self.cached(route, digest):  # committed since the caller looked
                return None
            download = self._downloads.get(digest)  # or started by a request meanwhile
        if download is not None and not download.failed and download.route.local != route.local:
            await self._confirm(route, digest)  # joining another repository's download
        if download is None or download.failed:
            self.on_event("blob", "miss")
            download = Download(self, route, digest)
            self._downloads[digest] = download
            download.task = asyncio.create_task(download.run())
        await download.started.wait()
        if download.error is not None and download.written == 0:  # failed before a byte: say why
            raise as_registry_error(download.error, "BLOB_UNKNOWN")
        return download


class Download:
    """One upstream blob download, written to storage; clients follow it from a memory window.

    The window holds the last ``WINDOW`` bytes. A client that falls behind it (or joins
    late) waits for the download to finish and reads the rest from storage, so a slow
    client never holds the download back, and nothing but storage is written.
    """

    def __init__(self, mirror: Mirror, route: Route, digest: Digest) -> None:
        self.mirror, self.route, self.digest = mirror, route, digest
        self.size: int | None = None
        self.written = 0  # bytes received and kept for the clients (the hash and storage follow)
        self.verified = False  # committed to the cache
        self.checked = False  # every byte is here and hashes right: clients may have the last one
        self.error: UpstreamError | None = None
        self.started = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._window: deque[bytes | memoryview] = deque()
        self._window_start = 0  # offset of the window's first byte
        self._changed = asyncio.Event()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _keep(self, chunk: bytes | memoryview) -> None:
        self._window.append(chunk)
        self.written += len(chunk)
        while self.written - self._window_start - len(self._window[0]) >= WINDOW:
            self._window_start += len(self._window.popleft())
        self._notify()

    async def run(self) -> None:
        store, route = self.mirror.store, self.route
        writer = None
        response = None
        spool: Spool | None = None
        uploading: asyncio.Future[None] | None = None
        claimed = 0  # bytes of $TMPDIR the spool claimed
        try:
            response = await route.client.send("GET", route.remote, f"blobs/{self.digest}")
            length = response.headers.get("content-length", "")
            self.size = int(length) if length.isdigit() else None
            limit = self.mirror.max_blob
            if limit and self.size is not None and self.size > limit:
                response.release()
                raise UpstreamUnavailable(
                    route.upstream, f"blob {self.digest} is {self.size} bytes, over {limit}"
                )
            self.started.set()
            writer = await store.driver.writer(layout.blob_data(self.digest))
            verifier = Verifier(self.digest, self.size)  # refuses a byte past the Content-Length
            # The hash (it releases the GIL) and the storage write each run in a lane of their
            # own, behind the reader: three cores' worth of work, not one piece at a time.
            hashing: Lane[bytes | memoryview] = Lane(
                lambda piece: asyncio.to_thread(verifier.update, piece), LANE_DEPTH
            )
            # A remote store (S3) may take bytes slower than the upstream sends them: spooled
            # when $TMPDIR has room for the blob, else written straight to the store.
            remote = store.driver.name != "filesystem"
            if not (remote and self.mirror.spool_room.claim(self.size)):
                storing: Lane[bytes | memoryview] = Lane(writer.write, LANE_DEPTH)
            else:
                claimed = self.size or 0
                spool = Spool()
                storing = Lane(spool.write, LANE_DEPTH)
                uploading = asyncio.ensure_future(spool.upload(writer, PIECE_SIZE))
            try:
                pieces = body_chunks(route.client, response, PIECE_SIZE)
                async with contextlib.aclosing(pieces) as chunks:
                    async for chunk in chunks:
                        if limit and self.written + len(chunk) > limit:  # longer than it said
                            raise UpstreamUnavailable(
                                route.upstream, f"blob {self.digest} runs over {limit} bytes"
                            )
                        self._keep(chunk)  # clients have it now; the last byte waits for the hash
                        await hashing.submit(chunk)
                        await storing.submit(chunk)
                await hashing.drain()
                await storing.drain()
                verifier.check()
            except VerifyError:
                raise UpstreamUnavailable(
                    route.upstream,
                    f"blob {self.digest} arrived as {verifier.actual} ({self.written} bytes): not cached",
                ) from None
            finally:  # never cancel the writer under a write in flight
                await hashing.settle()
                await storing.settle()
            if spool is not None and uploading is not None:
                spool.finish()
                self.checked = True  # the clients finish now; the upload goes on behind them
                self._notify()
                await uploading
            await writer.commit()
            writer = None
            await store.link_blob(route.local, self.digest)
            self.verified = self.checked = True
            self.mirror._evict_now.set()
        except UpstreamError as exc:
            log.warning("%s", exc)
            self.mirror._upstream_failed(route, exc)
            self.error = exc
        except SpoolFull as exc:  # $TMPDIR, not the store: /readyz has nothing to say about it
            log.warning("caching %s: %s", self.digest, exc)
            self.error = UpstreamUnavailable(route.upstream, f"caching {self.digest} failed: {exc}")
        except StorageFull as exc:  # as a request's own write would: /readyz says the store is full
            log.warning("caching %s: %s", self.digest, exc)
            self.mirror.on_storage_full()
            self.error = UpstreamUnavailable(route.upstream, f"caching {self.digest} failed: {exc}")
        except Exception as exc:  # storage failures: the clients must not wait forever
            log.exception("mirror download of %s failed", self.digest)
            self.error = UpstreamUnavailable(route.upstream, f"caching {self.digest} failed: {exc}")
        finally:
            if not self.checked and self.error is None:  # cancelled (shutdown): followers must not wait
                self.error = UpstreamUnavailable(route.upstream, f"download of {self.digest} stopped")
            if uploading is not None and not uploading.done():  # never under a write in flight
                uploading.cancel()
                await asyncio.wait([uploading])
            if uploading is not None and not uploading.cancelled():
                uploading.exception()  # reported above, if it failed
            if spool is not None:
                spool.close()
                self.mirror.spool_room.release(claimed)
            if response is not None:
                response.release()  # a no-op once the body was read; a leak otherwise
            if writer is not None:
                await writer.cancel()
            if self.mirror._downloads.get(self.digest) is self:
                del self.mirror._downloads[self.digest]
            self.started.set()
            self._notify()

    async def done(self) -> None:
        """Wait for the download to be verified and committed; its error if it failed."""
        assert self.task is not None
        await asyncio.shield(self.task)
        if not self.verified:
            raise as_registry_error(
                self.error or UpstreamUnavailable(self.route.upstream, "?"), "BLOB_UNKNOWN"
            )

    async def follow(self) -> AsyncIterator[bytes | memoryview]:
        """The blob's bytes as they arrive; the last byte only once the digest is verified."""
        offset = 0
        while True:
            changed = self._changed
            if offset < self._window_start:  # behind the window: the rest comes from storage
                try:
                    await self.done()
                except RegistryError as exc:  # the download failed: this client's body too
                    raise CutShort(str(exc)) from None
                async for chunk in self.mirror.store.read_blob(self.digest, offset):
                    yield chunk
                return
            allowed = self.written if self.checked else self.written - 1
            if offset < allowed:
                position = self._window_start
                for kept in self._window:
                    if position + len(kept) > offset:
                        break
                    position += len(kept)
                piece = memoryview(kept)[offset - position : allowed - position]
                offset += len(piece)
                yield piece
                continue
            if self.checked:
                return
            if self.error is not None:  # already logged: the client never has it whole
                raise CutShort(str(self.error))
            await changed.wait()
