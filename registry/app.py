"""The registry's HTTP surface: route, parse, call the store, turn the result into a reply.

A plain ASGI application built from Starlette's request and response objects. The
router is a short list of regular expressions because repository names contain
slashes and the spec's error bodies must answer unknown methods and paths too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from storage_backends import StorageDriver, StorageFull

from . import layout
from .access import build as build_security
from .auth import ACTION_ORDER, ANONYMOUS, Caller
from .config import Settings
from .errors import RegistryError
from .http import (
    API_VERSION_HEADER,
    content_length,
    empty_response,
    error_response,
    has_body,
    is_decimal,
    json_response,
    parse_byte_range,
    parse_content_range,
    read_limited,
)
from .instrumented import InstrumentedDriver
from .limits import InflightLimiter, client_key
from .logs import AccessLog, request_id
from .manifests import MANIFEST_TYPES, OCI_INDEX
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .notifications import Notifier
from .references import Digest, is_digest, lookup_reference, validate_name
from .space import NO_SPACE, SpaceWatch
from .store import RegistryStore
from .uploads import Uploads, UploadSession
from .upstreams import parse_upstreams

if TYPE_CHECKING:
    from .mirror import Mirror, Route

log = logging.getLogger("pier.registry")

Handler = Callable[..., Awaitable[Response]]
_API_VERSION = (API_VERSION_HEADER[0].encode(), API_VERSION_HEADER[1].encode())
MAX_TAGS_PER_PUT = 100
READY_TIMEOUT = 5.0  # seconds the store has to answer a readiness check
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
# What each handler needs the caller to be allowed; "registry": any authenticated caller;
# "listing": anyone, the handler showing only what the caller may pull.
_ACTIONS = {
    "base": "registry",
    "catalog": "listing",
    "tags": "pull",
    "get_manifest": "pull",
    "get_blob": "pull",
    "referrers": "pull",
    "put_manifest": "push",
    "start_upload": "push",
    "upload_status": "push",
    "patch_upload": "push",
    "finish_upload": "push",
    "cancel_upload": "push",
    "delete_manifest": "delete",
    "delete_blob": "delete",
}


_NEEDED = {action: frozenset({action}) for action in ACTION_ORDER}


class RegistryApp:
    def __init__(self, settings: Settings, driver: StorageDriver) -> None:
        self.settings = settings
        self.metrics = Metrics(driver.name) if settings.metrics else None
        self.limiter = InflightLimiter(settings.max_inflight_requests, settings.max_inflight_per_client)
        if self.metrics is not None:
            driver = InstrumentedDriver(driver, self.metrics)
            self.metrics.in_flight = lambda: self.limiter.inflight
        self.draining = False  # set on SIGTERM: /readyz fails so balancers stop sending work
        self.space = SpaceWatch()  # a write failed for lack of space: /readyz fails until there is room
        self.notifier = Notifier.from_settings(settings, driver)
        self.store = RegistryStore(driver)
        self.uploads = Uploads(
            self.store,
            max_blob_size=settings.max_blob_size or None,
            session_timeout=settings.upload_timeout,
            max_sessions=settings.max_upload_sessions,
            max_total_sessions=settings.max_upload_sessions_total,
            max_client_sessions=settings.max_upload_sessions_per_client,
        )
        security = build_security(settings)
        self.auth = security.access
        self.token_server = security.token_server
        self._purger: asyncio.Task[None] | None = None
        self._evicter: asyncio.Task[None] | None = None
        upstreams = parse_upstreams(settings.proxy, settings.proxy_auth_file)
        self.mirror: Mirror | None = None
        if upstreams:
            from .mirror import Mirror  # its HTTP client (aiohttp) is a fifth of startup: only when used

            self.mirror = Mirror(
                self.store,
                upstreams,
                ttl=settings.proxy_ttl,
                timeout=settings.proxy_timeout,
                max_manifest=settings.max_manifest_size,
                max_blob=settings.max_blob_size,
                cache_size=settings.proxy_cache_size,
            )
        if self.mirror is not None and self.metrics is not None:
            self.mirror.on_event = self.metrics.mirror_event
            self.mirror.on_upstream_error = self.metrics.upstream_error
        if self.mirror is not None:
            self.mirror.on_storage_full = self.space.mark_full
        n = r"(?P<name>.+)"
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Handler]]] = [
            (re.compile(r"/v2/?"), "/v2/", {"GET": self.base, "HEAD": self.base}),
            (re.compile(r"/v2/_catalog"), "/v2/_catalog", {"GET": self.catalog}),
            (re.compile(rf"/v2/{n}/tags/list"), "/v2/{name}/tags/list", {"GET": self.tags}),
            (
                re.compile(rf"/v2/{n}/manifests/(?P<reference>[^/]+)"),
                "/v2/{name}/manifests/{reference}",
                {
                    "GET": self.get_manifest,
                    "HEAD": self.get_manifest,
                    "PUT": self.put_manifest,
                    "DELETE": self.delete_manifest,
                },
            ),
            (
                re.compile(rf"/v2/{n}/blobs/uploads/?"),
                "/v2/{name}/blobs/uploads/",
                {"POST": self.start_upload},
            ),
            (
                re.compile(rf"/v2/{n}/blobs/uploads/(?P<upload_id>[^/]+)"),
                "/v2/{name}/blobs/uploads/{uuid}",
                {
                    "GET": self.upload_status,
                    "PATCH": self.patch_upload,
                    "PUT": self.finish_upload,
                    "DELETE": self.cancel_upload,
                },
            ),
            (
                re.compile(rf"/v2/{n}/blobs/(?P<digest>[^/]+)"),
                "/v2/{name}/blobs/{digest}",
                {"GET": self.get_blob, "HEAD": self.get_blob, "DELETE": self.delete_blob},
            ),
            (
                re.compile(rf"/v2/{n}/referrers/(?P<digest>[^/]+)"),
                "/v2/{name}/referrers/{digest}",
                {"GET": self.referrers},
            ),
        ]
        self.operations = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            **({"/metrics": self.serve_metrics} if self.metrics is not None else {}),
        }
        self.access_log = AccessLog(settings.log_format) if settings.access_log else None
        self._flusher: asyncio.Task[None] | None = None
        self._observed = self.metrics is not None or self.access_log is not None

    # -- ASGI ----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        scope["pier.request_id"] = rid = request_id(_raw_header(scope, b"x-request-id"))
        extra = [_API_VERSION, (b"x-request-id", rid.encode())]
        # Limits are taken in _admit, once the client is known (health, readiness and metrics
        # never: a busy server is not a dead one); until then a request only costs its auth check.
        observed = self._observed
        received = [0]
        status, sent = 500, 0
        if observed:

            async def counting_receive() -> Message:
                message = await receive()
                received[0] += len(message.get("body", b""))
                return message

            request = Request(scope, counting_receive)
        else:
            request = Request(scope, receive)
        # The places are held until the body is sent: blob downloads count too.
        try:
            response = await self._dispatch(request)
            response.raw_headers += extra
            status = response.status_code
            if observed and isinstance(response, StreamingResponse):
                streamed = [0]

                async def counting_send(message: Message) -> None:
                    if message["type"] == "http.response.body":
                        streamed[0] += len(message.get("body", b""))
                    await send(message)

                try:
                    await response(scope, receive, counting_send)
                finally:
                    sent = streamed[0]
            else:
                sent = len(response.body)  # wrapping send costs more than the rest of a HEAD's logging
                await response(scope, receive, send)
        finally:
            admitted = scope.get("pier.admitted")
            if admitted is not None:
                self.limiter.release(admitted)
            if observed:
                self._observe(scope, status, received[0], sent, time.perf_counter() - start)

    def _observe(self, scope: Scope, status: int, received: int, sent: int, seconds: float) -> None:
        if self.metrics is not None:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.request(scope.get("pier.route", "other"), method, status, seconds, received, sent)
        if self.access_log is not None:
            self.access_log.record(scope, status, received, sent, seconds)

    async def _dispatch(self, request: Request) -> Response:
        path = request.scope["path"]  # decoded, as uvicorn gave it (URL() would strip newlines)
        if self.token_server is not None and path == "/auth/token":
            request.scope["pier.route"] = path
            try:
                self._admit(request.scope)
            except RegistryError as error:
                return error_response(error)
            return await self.token_server(request)
        operation = self.operations.get(path)
        if operation is not None:
            request.scope["pier.route"] = path
            return await operation(request)
        routes = [] if self.settings.token_only else self.routes
        for pattern, template, methods in routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            request.scope["pier.route"] = template
            try:
                params = match.groupdict()
                if "name" in params:
                    validate_name(params["name"])
                    request.scope["pier.repository"] = params["name"]
                handler = methods.get(request.method)
                if self.auth is not None:  # before anything else: a denial says nothing of what exists
                    await self._authorize(request, handler, params.get("name"))
                if self.mirror is not None and "name" in params:
                    self._check_writable(handler, params["name"])
                if handler is None:
                    raise RegistryError(
                        "UNSUPPORTED",
                        f"{request.method} is not supported on {path[:200]}",
                        headers={"Allow": ", ".join(methods)},
                    )
                self._admit(request.scope)
                return await handler(request, **params)
            except RegistryError as error:
                return error_response(error)
            except ClientDisconnect:
                return empty_response(400, {})
            except StorageFull as exc:  # 507, and /readyz fails until there is room again
                log.warning("%s %s: %s", request.method, path[:200], exc)
                self.space.mark_full()
                return error_response(RegistryError("INSUFFICIENT_STORAGE"))
            except Exception:  # a failure still answers in the spec's format
                log.exception("%s %s failed", request.method, path[:200])
                return error_response(RegistryError("UNKNOWN", "internal error; see the server log"))
        return error_response(
            RegistryError("UNSUPPORTED", f"no endpoint at {path[:200]}", message="not found", status=404)
        )

    async def _authorize(self, request: Request, handler: Handler | None, name: str | None) -> None:
        assert self.auth is not None
        authorization = next((v for k, v in request.scope["headers"] if k == b"authorization"), None)
        caller = await self.auth.identify(
            authorization.decode("latin-1") if authorization is not None else None, lambda: _base_url(request)
        )
        request.scope["pier.caller"] = caller
        action = _ACTIONS.get(getattr(handler, "__name__", ""), "push")
        if action == "registry":
            self.auth.check_base(caller)
        elif action == "listing":
            self.auth.check_catalog(caller)
        else:
            assert name is not None
            self.auth.authorize(caller, name, _NEEDED[action])

    def _admit(self, scope: Scope) -> None:
        """Take a place of the caller's own (known once authorized) and one of the process's
        total, released in ``__call__``: a refused client never counts toward the total."""
        key = client_key(scope)
        self.limiter.admit(key)
        scope["pier.admitted"] = key

    def _check_writable(self, handler: Handler | None, name: str) -> None:
        """A mirrored repository is the upstream's: pushes and deletes there are refused."""
        assert self.mirror is not None
        upstream = self.mirror.proxied(name)
        if upstream is not None and _ACTIONS.get(getattr(handler, "__name__", ""), "push") in (
            "push",
            "delete",
        ):
            raise RegistryError("DENIED", f"{name} mirrors {upstream.url}: it is read-only here")

    async def _mirror_route(self, request: Request, name: str) -> Route | None:
        """Where a mirrored name comes from; a bare name must also be pullable as what it maps to."""
        if self.mirror is None:
            return None
        route = await self.mirror.route(name)
        if route is not None and route.local != name and self.auth is not None:
            self.auth.authorize(self._caller(request), route.local, _NEEDED["pull"])
        return route

    async def _notify(self, request: Request, action: str, name: str, target: dict[str, object]) -> None:
        """Queue the event in storage before the request is answered (a no-op without endpoints)."""
        if not self.notifier.endpoints:
            return
        client = request.scope.get("client")
        caller = request.scope.get("pier.caller")
        details = {
            "id": request.scope.get("pier.request_id", ""),
            "addr": f"{client[0]}:{client[1]}" if client else "",
            "host": request.headers.get("host", ""),
            "method": request.method,
            "useragent": request.headers.get("user-agent", ""),
            "user": caller.account if caller is not None and caller.account != ANONYMOUS else "",
        }
        if "digest" in target:
            kind = (
                "manifests" if action != "delete" and target.get("mediaType") in MANIFEST_TYPES else "blobs"
            )
            target = {**target, "url": f"{_base_url(request)}/v2/{name}/{kind}/{target['digest']}"}
        await self.notifier.publish(action, name, dict(target), details)

    def _caller(self, request: Request) -> Caller:
        return request.scope.get("pier.caller") or Caller(ANONYMOUS)

    def _may_pull(self, request: Request, name: str) -> bool:
        return self.auth is None or self.auth.may_pull(self._caller(request), name)

    def _visible(self, request: Request, name: str) -> bool:
        return self.auth is None or self.auth.visible_in_catalog(self._caller(request), name)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._purger = asyncio.create_task(self._purge_uploads_forever())
                if self.mirror is not None and self.mirror.cache_size:
                    self._evicter = asyncio.create_task(self.mirror.evict_forever())
                self.notifier.start()
                if self.access_log is not None:
                    self._flusher = asyncio.create_task(self.access_log.flush_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in (self._purger, self._evicter, self._flusher):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if self.mirror is not None:
                    await self.mirror.close()
                await self.notifier.close()
                await self.store.driver.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _purge_uploads_forever(self) -> None:
        interval = max(1.0, min(self.settings.upload_timeout / 4, 3600.0))
        while True:
            try:
                purged = await self.uploads.purge_expired()
                if purged:
                    log.info("purged %d abandoned upload sessions", purged)
            except Exception:
                log.exception("purging upload sessions failed")
            await asyncio.sleep(interval)

    # -- operations ------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        """Alive: the process answers. Nothing else is checked, so a slow store never restarts it."""
        return json_response({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        """Ready: not draining, the store answers, and a mirror can write to its cache."""
        if self.draining:
            return json_response({"status": "draining"}, 503)
        try:
            await asyncio.wait_for(self._check_storage(), READY_TIMEOUT)
        except Exception as exc:
            log.warning("not ready: storage check failed: %s", exc)
            return json_response({"status": "storage unavailable"}, 503)
        try:
            writable = await asyncio.wait_for(self.space.writable(self.store.driver), READY_TIMEOUT)
        except Exception as exc:
            log.warning("not ready: free space check failed: %s", exc)
            writable = False
        if not writable:
            return json_response({"status": "storage full", "reason": f"{NO_SPACE}: writes fail"}, 503)
        return json_response({"status": "ready"})

    async def _check_storage(self) -> None:
        driver = self.store.driver
        await driver.list(layout.REPOSITORIES)
        if self.mirror is not None:
            await driver.put_content(layout.HEALTH_PROBE, b"ok")

    async def serve_metrics(self, request: Request) -> Response:
        assert self.metrics is not None
        body = await self.metrics.render(self.store.driver)
        return Response(body, 200, media_type=METRICS_CONTENT_TYPE)

    # -- base and listings -----------------------------------------------------------
    async def base(self, request: Request) -> Response:
        return json_response({})

    def _page_size(self, request: Request, default: int | None) -> int | None:
        value = request.query_params.get("n")
        if value is None or value == "":
            return default
        if not is_decimal(value):
            raise RegistryError(
                "PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer: {value[:40]!r}"
            )
        return min(int(value), self.settings.catalog_page_size) if default else int(value)

    @staticmethod
    def _paginate(
        items: list[str], request: Request, n: int | None, path: str
    ) -> tuple[list[str], dict[str, str]]:
        last = request.query_params.get("last")
        if last:
            items = [item for item in items if item > last]
        headers: dict[str, str] = {}
        if n is not None and len(items) > n:
            items = items[:n]
            if items:
                query = urlencode({"n": n, "last": items[-1]})
                headers["Link"] = f'<{path}?{query}>; rel="next"'
        return items, headers

    async def catalog(self, request: Request) -> Response:
        n = self._page_size(request, self.settings.catalog_page_size)
        visible = [name for name in await self.store.repositories() if self._visible(request, name)]
        names, headers = self._paginate(visible, request, n, "/v2/_catalog")
        return json_response({"repositories": names}, headers=headers)

    async def tags(self, request: Request, name: str) -> Response:
        route = await self._mirror_route(request, name)
        if route is not None:
            assert self.mirror is not None
            every = await self.mirror.tags(route)
        elif await self.store.repository_exists(name):
            every = await self.store.tags(name)
        else:
            raise RegistryError("NAME_UNKNOWN", name)
        n = self._page_size(request, None)
        tags, headers = self._paginate(every, request, n, f"/v2/{name}/tags/list")
        return json_response({"name": name, "tags": tags}, headers=headers)

    # -- manifests -------------------------------------------------------------------
    async def get_manifest(self, request: Request, name: str, reference: str) -> Response:
        lookup_reference(reference)  # neither tag nor digest: 404 MANIFEST_UNKNOWN, upstream unasked
        route = await self._mirror_route(request, name)
        if route is not None:
            assert self.mirror is not None
            await self.mirror.manifest(route, reference)
            name = route.local
        record = await self.store.resolve(name, reference)
        if route is not None:
            assert self.mirror is not None
            await self.mirror.pulled(route, record.digest)
        accepted = _accepted_types(request)
        if accepted and record.media_type not in accepted:
            # Clients that list manifest types but not this one cannot use it.
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                f"manifest is {record.media_type}, which the Accept header does not list",
            )
        headers = {
            "content-type": record.media_type,
            "docker-content-digest": str(record.digest),
            "etag": f'"{record.digest}"',
            "content-length": str(record.size),
        }
        if request.method == "HEAD":
            return Response(b"", 200, headers)
        body = await self.store.manifest_body(record)
        target = _manifest_target(record.media_type, str(record.digest), record.size)
        await self._notify(request, "pull", name, {**target, **_tag_of(reference)})
        return Response(body, 200, headers)

    async def put_manifest(self, request: Request, name: str, reference: str) -> Response:
        body = await read_limited(request, self.settings.max_manifest_size, "manifest")
        tags = request.query_params.getlist("tag")
        if len(tags) > MAX_TAGS_PER_PUT:
            raise RegistryError("TAG_INVALID", f"at most {MAX_TAGS_PER_PUT} tag parameters per request")
        digest, manifest = await self.store.put_manifest(
            name, reference, body, request.headers.get("content-type"), tags
        )
        target = _manifest_target(manifest.media_type, str(digest), len(body))
        for tag in ([] if is_digest(reference) else [reference]) + tags or [""]:
            await self._notify(request, "push", name, {**target, **({"tag": tag} if tag else {})})
        response = empty_response(
            201,
            {"location": f"/v2/{name}/manifests/{digest}", "docker-content-digest": str(digest)},
        )
        if manifest.subject is not None:
            response.headers["oci-subject"] = str(manifest.subject.digest)
        for tag in tags if is_digest(reference) else []:
            response.headers.append("oci-tag", tag)
        return response

    async def delete_manifest(self, request: Request, name: str, reference: str) -> Response:
        self._check_delete()
        lookup_reference(reference)
        await self.store.delete_manifest(name, reference)
        await self._notify(
            request, "delete", name, {"digest": reference} if is_digest(reference) else _tag_of(reference)
        )
        return empty_response(202, {})

    def _check_delete(self) -> None:
        if not self.settings.delete_enabled:
            raise RegistryError("UNSUPPORTED", "deletes are disabled on this registry")

    # -- blobs -----------------------------------------------------------------------
    async def get_blob(self, request: Request, name: str, digest: str) -> Response:
        parsed = Digest.parse(digest)
        route = await self._mirror_route(request, name)
        if route is not None:
            assert self.mirror is not None
            if not await self.mirror.cached(route, parsed):
                return await self._mirror_blob(request, route, parsed)
            name = route.local
        size = await self.store.blob_size(name, parsed)
        headers = {
            "content-type": "application/octet-stream",
            "docker-content-digest": str(parsed),
            "etag": f'"{parsed}"',
            "accept-ranges": "bytes",
        }
        byte_range = None
        if "range" in request.headers:
            byte_range = parse_byte_range(request.headers["range"], size)
        if byte_range is None:
            status, offset, length = 200, 0, size
        else:
            status, offset, length = 206, byte_range[0], byte_range[1] - byte_range[0] + 1
            headers["content-range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
        headers["content-length"] = str(length)
        if request.method == "HEAD":
            return Response(b"", status, headers)
        await self._notify(request, "pull", name, _blob_target(str(parsed), size))
        if self.settings.redirect:
            url = await self.store.blob_url(parsed, self.settings.redirect_expiry)
            if url is not None:  # the client fetches (and ranges) straight from the storage
                redirect = {
                    "location": url,
                    "docker-content-digest": str(parsed),
                    "cache-control": "no-store",
                }
                return Response(b"", 307, redirect)
        return StreamingResponse(self.store.read_blob(parsed, offset, length), status, headers)

    async def _mirror_blob(self, request: Request, route: Route, digest: Digest) -> Response:
        """A blob the cache does not have yet: streamed while the mirror downloads it."""
        assert self.mirror is not None
        headers = {
            "content-type": "application/octet-stream",
            "docker-content-digest": str(digest),
            "etag": f'"{digest}"',
        }
        if request.method == "HEAD":
            headers["content-length"] = str(await self.mirror.upstream_size(route, digest))
            return Response(b"", 200, headers)
        download = await self.mirror.download(route, digest)
        if download is None:  # it reached the store meanwhile
            return await self.get_blob(request, route.local, str(digest))
        if download.size is not None:
            headers["content-length"] = str(download.size)
        await self._notify(request, "pull", route.local, _blob_target(str(digest), download.size))
        if "range" in request.headers:  # ranges are served from the cache, once it has the blob
            await download.done()
            return await self.get_blob(request, route.local, str(digest))
        return StreamingResponse(download.follow(), 200, headers)

    async def delete_blob(self, request: Request, name: str, digest: str) -> Response:
        self._check_delete()
        await self.store.delete_blob(name, Digest.parse(digest))
        await self._notify(request, "delete", name, {"digest": digest})
        return empty_response(202, {})

    # -- uploads ---------------------------------------------------------------------
    def _session_headers(self, name: str, upload_id: str, size: int) -> dict[str, str]:
        return {
            "location": f"/v2/{name}/blobs/uploads/{upload_id}",
            "range": Uploads.range_header(size),
            "docker-upload-uuid": upload_id,
        }

    def _add_session_headers(self, error: RegistryError, name: str, session: UploadSession) -> None:
        """A 416 tells the client where the upload stands, so it can resume from there."""
        if error.status == 416:
            error.headers.update(self._session_headers(name, session.id, session.size))

    def _blob_created(self, name: str, digest: Digest) -> Response:
        return empty_response(
            201, {"location": f"/v2/{name}/blobs/{digest}", "docker-content-digest": str(digest)}
        )

    async def start_upload(self, request: Request, name: str) -> Response:
        query = request.query_params
        if "mount" in query:
            digest = Digest.parse(query["mount"])
            source = query.get("from")
            # A source the caller may not pull from is not mounted: a plain upload session
            # answers instead, exactly as for a blob the source lacks.
            if (
                source
                and self._may_pull(request, validate_name(source))
                and await self.store.mount_blob(name, source, digest)
            ):
                return self._blob_created(name, digest)
        elif "digest" in query:
            digest = Digest.parse(query["digest"])
            await self.uploads.put_monolithic(name, digest, request.stream(), content_length(request))
            return self._blob_created(name, digest)
        session = await self.uploads.start(
            name, query.get("digest-algorithm", "sha256"), owner=client_key(request.scope)
        )
        headers = self._session_headers(name, session.id, 0)
        headers["oci-chunk-min-length"] = str(self.settings.chunk_min_length)
        return empty_response(202, headers)

    async def upload_status(self, request: Request, name: str, upload_id: str) -> Response:
        session = await self.uploads.get(name, upload_id)
        return empty_response(204, self._session_headers(name, session.id, session.size))

    async def patch_upload(self, request: Request, name: str, upload_id: str) -> Response:
        session = await self.uploads.get(name, upload_id)
        header = request.headers.get("content-range")
        content_range = parse_content_range(header) if header else None
        try:
            await self.uploads.append(session, request.stream(), content_range, content_length(request))
        except RegistryError as error:
            self._add_session_headers(error, name, session)
            raise
        return empty_response(202, self._session_headers(name, session.id, session.size))

    async def finish_upload(self, request: Request, name: str, upload_id: str) -> Response:
        if "digest" not in request.query_params:
            raise RegistryError("DIGEST_INVALID", "the digest query parameter is required")
        digest = Digest.parse(request.query_params["digest"])
        session = await self.uploads.get(name, upload_id)
        header = request.headers.get("content-range")
        content_range = parse_content_range(header) if header else None
        body = request.stream() if has_body(request) else None
        try:
            await self.uploads.finish(session, digest, body, content_range, content_length(request))
        except RegistryError as error:
            self._add_session_headers(error, name, session)
            raise
        return self._blob_created(name, digest)

    async def cancel_upload(self, request: Request, name: str, upload_id: str) -> Response:
        await self.uploads.cancel(name, upload_id)
        return empty_response(204, {})

    # -- referrers -------------------------------------------------------------------
    async def referrers(self, request: Request, name: str, digest: str) -> Response:
        subject = Digest.parse(digest)
        artifact_type = request.query_params.get("artifactType")
        index = await self.store.referrers(name, subject, artifact_type)
        headers = {"oci-filters-applied": "artifactType"} if artifact_type else None
        return json_response(index, headers=headers, media_type=OCI_INDEX)


_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def _manifest_target(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size, "length": size}


def _blob_target(digest: str, size: int | None) -> dict[str, object]:
    target: dict[str, object] = {"mediaType": "application/octet-stream", "digest": digest}
    if size is not None:
        target["size"] = target["length"] = size
    return target


def _tag_of(reference: str) -> dict[str, str]:
    return {} if is_digest(reference) else {"tag": reference}


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


def _header(scope: Scope, name: bytes) -> str | None:
    value = _raw_header(scope, name)
    return value.decode("latin-1") if value is not None else None


def _base_url(request: Request) -> str:
    """This server as the client reached it, for a token realm on it; a strange Host is not echoed."""
    host = request.headers.get("host", "")
    if not _HOST.fullmatch(host):
        server = request.scope.get("server") or ("127.0.0.1", 5000)
        host = f"{server[0]}:{server[1]}"
    return f"{request.scope.get('scheme', 'http')}://{host}"


def _accepted_types(request: Request) -> set[str]:
    """Manifest media types the client listed; empty means it takes anything."""
    types: set[str] = set()
    for header in request.headers.getlist("accept"):
        for part in header.split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if media_type in ("*/*", "application/*"):
                return set()
            types.add(media_type)
    if not types & MANIFEST_TYPES:
        return set()  # e.g. only application/json: not a manifest negotiation at all
    return types
