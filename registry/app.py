"""The registry's ASGI entry: admission and limits, dispatch through the route table, the permission
check the table names, errors in the spec's format, and the lifespan's background tasks.

What each endpoint does is in ``registry/routes/`` (one module per resource); which handler answers
which path and method, and what the caller must be allowed, is in its table alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import perf_counter
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from storage_backends import StorageDriver, StorageFull

from .access import build as build_security
from .auth import parse_basic
from .config import Settings
from .errors import RegistryError
from .governance.policy import parse_policies
from .governance.service import Governance
from .http import API_VERSION_HEADER, ZERO_COPY, FileSendResponse, empty_response, error_response
from .instrumented import InstrumentedDriver
from .limits import InflightLimiter, client_key
from .logs import AccessLog, request_id
from .metrics import Metrics
from .notifications import Notifier
from .references import validate_name
from .routes import Router, Services, served
from .routes.services import NEEDED, base_url
from .space import SpaceWatch
from .store import RegistryStore
from .uploads import Uploads
from .upstream_config import parse_upstreams
from .workers import WorkerMetrics

if TYPE_CHECKING:
    from .mirror import Mirror
    from .ui.app import WebUI

log = logging.getLogger("pier.registry")

_API_VERSION = (API_VERSION_HEADER[0].encode(), API_VERSION_HEADER[1].encode())
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})  # others: "OTHER"
_PLAIN_CALL = Response.__call__
VALID_NAMES_KEPT = 4096  # repository names already validated, so a name's pattern runs once


class RegistryApp:
    def __init__(self, settings: Settings, driver: StorageDriver, workers_folder: str | None = None) -> None:
        """``workers_folder``: the run folder of ``--workers N`` (registry/workers.py), in a worker."""
        self.settings = settings
        self.metrics = Metrics(driver.name) if settings.metrics else None
        self.worker_metrics = None
        if workers_folder and self.metrics is not None:
            self.worker_metrics = WorkerMetrics(workers_folder, self.metrics)
        self._publisher: asyncio.Task[None] | None = None
        self.limiter = InflightLimiter(settings.max_inflight_requests, settings.max_inflight_per_client)
        if self.metrics is not None:
            driver = InstrumentedDriver(driver, self.metrics)
            self.metrics.in_flight = lambda: self.limiter.inflight
        store = RegistryStore(driver)
        security = build_security(settings)
        self.auth = security.access
        self.token_server = security.token_server
        self.services = Services(
            settings=settings,
            store=store,
            uploads=Uploads(
                store,
                max_blob_size=settings.max_blob_size or None,
                session_timeout=settings.upload_timeout,
                max_sessions=settings.max_upload_sessions,
                max_total_sessions=settings.max_upload_sessions_total,
                max_client_sessions=settings.max_upload_sessions_per_client,
            ),
            notifier=Notifier.from_settings(settings, driver),
            auth=self.auth,
            mirror=self._mirror(settings, store),
            metrics=self.metrics,
            token_server=self.token_server,
            governance=Governance(
                store,
                parse_policies(settings.quotas, settings.retention, settings.immutable_tags, settings.admins),
                audit=settings.audit,
                index_refresh=settings.index_refresh,
                pull_stats_interval=settings.pull_stats_interval,
                retention_interval=settings.retention_interval,
            ),
            space=SpaceWatch(),
        )
        self.governance = self.services.governance
        self.governance.open = self.auth is None
        self.services.uploads.admit = self.governance.admit_blob
        self.store, self.uploads, self.notifier = store, self.services.uploads, self.services.notifier
        self.mirror, self.space = self.services.mirror, self.services.space
        if self.mirror is not None:
            self.mirror.on_storage_full = self.space.mark_full
        features = [
            name for name, on in (("metrics", self.metrics), ("token_server", self.token_server)) if on
        ]
        self.router = Router(served(features, api=not settings.token_only))
        self._valid_names: dict[str, None] = {}
        self._purger: asyncio.Task[None] | None = None
        self._evicter: asyncio.Task[None] | None = None
        self.access_log = AccessLog(settings.log_format) if settings.access_log else None
        self._flusher: asyncio.Task[None] | None = None
        self._observed = self.metrics is not None or self.access_log is not None
        self.ui = self._web_ui(settings)

    def _web_ui(self, settings: Settings) -> WebUI | None:
        if not settings.ui or settings.token_only:
            return None
        from .ui.app import WebUI  # Jinja2 and the templates: only when the UI is served

        return WebUI(self.services)

    def _mirror(self, settings: Settings, store: RegistryStore) -> Mirror | None:
        upstreams = parse_upstreams(settings.proxy, settings.proxy_auth_file)
        if not upstreams:
            return None
        from .mirror import Mirror  # its HTTP client (aiohttp) is a fifth of startup: only when used

        mirror = Mirror(
            store,
            upstreams,
            ttl=settings.proxy_ttl,
            timeout=settings.proxy_timeout,
            max_manifest=settings.max_manifest_size,
            max_blob=settings.max_blob_size,
            cache_size=settings.proxy_cache_size,
        )
        if self.metrics is not None:
            mirror.on_event = self.metrics.mirror_event
            mirror.on_upstream_error = self.metrics.upstream_error
        return mirror

    @property
    def draining(self) -> bool:
        """Set on SIGTERM: /readyz fails so balancers stop sending work."""
        return self.services.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.services.draining = value

    # -- ASGI ----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        start = perf_counter()
        path = scope["path"]
        if self.ui is not None and (path == "/ui" or path.startswith("/ui/")):
            await self._serve_ui(scope, receive, send, start)
            return
        header = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                header = value
                break
        scope["pier.request_id"] = rid = request_id(header)
        # Limits are taken in _admit, once the client is known (health, readiness and metrics
        # never: a busy server is not a dead one); until then a request only costs its auth check.
        observed = self._observed
        received = 0
        status, sent = 500, 0
        if observed:

            async def counting_receive() -> Message:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                return message

            request = Request(scope, counting_receive)
        else:
            request = Request(scope, receive)
        # The places are held until the body is sent: blob downloads count too.
        try:
            response = await self._dispatch(request, scope)
            response.raw_headers += [_API_VERSION, (b"x-request-id", rid.encode())]
            status = response.status_code
            if observed and isinstance(response, StreamingResponse | FileSendResponse):

                async def counting_send(message: Message) -> None:
                    nonlocal sent
                    if message["type"] == "http.response.body":
                        sent += len(message.get("body", b""))
                    elif message["type"] == ZERO_COPY:
                        sent += message["count"]
                    await send(message)

                await response(scope, receive, counting_send)
            else:
                sent = len(response.body)  # wrapping send costs more than the rest of a HEAD's logging
                if response.background is None and type(response).__call__ is _PLAIN_CALL:
                    # What Response.__call__ does, without its coroutine: this is on every request.
                    start_message = {"type": "http.response.start", "status": status}
                    start_message["headers"] = response.raw_headers
                    await send(start_message)
                    await send({"type": "http.response.body", "body": response.body})
                else:
                    await response(scope, receive, send)
        finally:
            admitted = scope.get("pier.admitted")
            if admitted is not None:
                self.limiter.release(admitted)
            if observed:
                self._observe(scope, status, received, sent, perf_counter() - start)

    async def _serve_ui(self, scope: Scope, receive: Receive, send: Send, start: float) -> None:
        assert self.ui is not None
        scope["pier.request_id"] = request_id(None)
        scope["pier.route"] = "/ui"
        status, sent = 500, 0

        async def observed_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            try:
                self._admit(scope)  # the API's limits: per client and per process
            except RegistryError as error:
                await error_response(error)(scope, receive, observed_send)
                return
            await self.ui(scope, receive, observed_send)
        finally:
            admitted = scope.get("pier.admitted")
            if admitted is not None:
                self.limiter.release(admitted)
            if self._observed:
                self._observe(scope, status, 0, sent, perf_counter() - start)

    def _observe(self, scope: Scope, status: int, received: int, sent: int, seconds: float) -> None:
        if self.metrics is not None:
            method = scope["method"]
            self.metrics.request(
                scope.get("pier.route", "other"),
                method if method in _METHODS else "OTHER",
                status,
                seconds,
                received,
                sent,
            )
        if self.access_log is not None:
            self.access_log.record(scope, status, received, sent, seconds)

    async def _dispatch(self, request: Request, scope: Scope) -> Response:
        path: str = scope["path"]  # decoded, as uvicorn gave it (URL() would strip newlines)
        found = self.router.match(path)
        if found is None:
            return error_response(
                RegistryError("UNSUPPORTED", f"no endpoint at {path[:200]}", message="not found", status=404)
            )
        route, params = found
        scope["pier.route"] = route.template
        method: str = scope["method"]
        try:
            name = params.get("name")
            if name is not None:
                if name not in self._valid_names:
                    self._remember_valid(validate_name(name))
                scope["pier.repository"] = name
            endpoint = route.methods.get(method)
            if endpoint is None:  # before auth: whatever the caller may do, this is no endpoint
                raise RegistryError(
                    "UNSUPPORTED",
                    f"{method} is not supported on {path[:200]}",
                    headers={"Allow": route.allow},
                )
            action = endpoint.action
            if method not in ("GET", "HEAD"):
                self._refuse_cross_site(request)
            if action != "operations":
                if self.auth is not None and action != "token":  # a denial says nothing of what exists
                    await self._authorize(request, action, name)
                if self.mirror is not None and name is not None and action in ("push", "delete"):
                    self._check_writable(name)
                self._admit(scope)
            return await endpoint.handler(self.services, request, **params)
        except RegistryError as error:
            return error_response(error)
        except ClientDisconnect:
            return empty_response(400, {})
        except StorageFull as exc:  # 507, and /readyz fails until there is room again
            log.warning("%s %s: %s", method, path[:200], exc)
            self.space.mark_full()
            return error_response(RegistryError("INSUFFICIENT_STORAGE"))
        except Exception:  # a failure still answers in the spec's format
            log.exception("%s %s failed", method, path[:200])
            return error_response(RegistryError("UNKNOWN", "internal error; see the server log"))

    @staticmethod
    def _refuse_cross_site(request: Request) -> None:
        """A browser holding Basic credentials for this registry must not be made to push, delete
        or run retention by another site's form: clients of the API send no Origin at all."""
        origin = fetch_site = None
        for key, value in request.scope["headers"]:
            if key == b"origin":
                origin = value.decode("latin-1")
            elif key == b"sec-fetch-site":
                fetch_site = value.decode("latin-1")
        if fetch_site == "cross-site" or (origin is not None and origin != base_url(request)):
            raise RegistryError("DENIED", "a cross-site request may not change the registry")

    def _remember_valid(self, name: str) -> None:
        if len(self._valid_names) >= VALID_NAMES_KEPT:
            self._valid_names.clear()  # cheaper than an LRU's bookkeeping on every request
        self._valid_names[name] = None

    async def _authorize(self, request: Request, action: str, name: str | None) -> None:
        """The check the route table names for this method, before the handler runs."""
        assert self.auth is not None
        authorization = None
        for key, value in request.scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            caller = await self.auth.identify(authorization, lambda: base_url(request))
        except RegistryError as error:
            if authorization and error.code == "UNAUTHORIZED":
                await self._login_failed(request, authorization, error)
            raise
        request.scope["pier.caller"] = caller
        if action == "base":
            self.auth.check_base(caller)
        elif action == "admin":
            self.auth.check_base(caller)  # anonymous: asked to log in
            if not self.governance.is_admin(caller.account):
                raise RegistryError("DENIED", f"{caller.account} is not an admin of this registry")
        elif action == "catalog":
            self.auth.check_catalog(caller)
        else:
            assert name is not None, f"{action} needs a repository"
            self.auth.authorize(caller, name, NEEDED[action])

    async def _login_failed(self, request: Request, authorization: str, error: RegistryError) -> None:
        """A wrong password goes to the audit log, with the user it claimed to be; a malformed
        or foreign credential (a bad token, garbage) proves no one's attempt and is not logged."""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return
        try:
            user = parse_basic(value)[0]
        except ValueError:
            return
        client = request.scope.get("client")
        await self.governance.login_failed(
            user,
            client[0] if client else "",
            str(error.detail or error.message)[:200],
            request.scope.get("pier.request_id", ""),
            request.scope.get("pier.repository", ""),
        )

    def _admit(self, scope: Scope) -> None:
        """Take a place of the caller's own (known once authorized) and one of the process's
        total, released in ``__call__``: a refused client never counts toward the total."""
        key = client_key(scope)
        self.limiter.admit(key)
        scope["pier.admitted"] = key

    def _check_writable(self, name: str) -> None:
        """A mirrored repository is the upstream's: pushes and deletes there are refused."""
        assert self.mirror is not None
        upstream = self.mirror.proxied(name)
        if upstream is not None:
            raise RegistryError("DENIED", f"{name} mirrors {upstream.url}: it is read-only here")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.worker_metrics is not None:
                    self.worker_metrics.start()
                    self._publisher = asyncio.create_task(self.worker_metrics.publish_forever())
                self._purger = asyncio.create_task(self._purge_uploads_forever())
                if self.mirror is not None and self.mirror.cache_size:
                    self._evicter = asyncio.create_task(self.mirror.evict_forever())
                self.notifier.start()
                self.governance.start()
                if self.access_log is not None:
                    self._flusher = asyncio.create_task(self.access_log.flush_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in (self._purger, self._evicter, self._flusher, self._publisher):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if self.worker_metrics is not None:
                    self.worker_metrics.close()
                if self.mirror is not None:
                    await self.mirror.close()
                await self.notifier.close()
                await self.governance.close()
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
