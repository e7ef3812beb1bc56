"""Build the ASGI app from settings and run it under uvicorn."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import tempfile
import time
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from . import protocol
from .app import RegistryApp
from .backend import open_driver
from .config import Settings, load_settings, to_environ
from .logs import log_config
from .workers import RUN_FOLDER_ENV, remove_run_folder, run_folder

log = logging.getLogger("pier.registry")
S3_START_WAIT = 20.0  # seconds a starting server waits for its S3 store to answer


def create_app(settings: Settings, workers_folder: str | None = None) -> RegistryApp:
    protocol.configure(
        settings.max_header_size, settings.max_headers, settings.header_timeout, settings.idle_timeout
    )
    return RegistryApp(settings, open_driver(settings, wait=S3_START_WAIT), workers_folder)


def app_from_environ() -> RegistryApp:
    """Factory for uvicorn's worker processes: they read the settings from PIER_*, and the run
    folder where the workers share their metrics from PIER_WORKERS_DIR."""
    return create_app(load_settings(), os.environ.get(RUN_FOLDER_ENV) or None)


class DrainingServer(uvicorn.Server):
    """On SIGTERM, first fail /readyz for ``shutdown_delay`` while still serving, so a load
    balancer stops sending work here; then close the listener and let in-flight requests
    finish within ``shutdown_timeout`` (uvicorn's graceful shutdown)."""

    def __init__(self, config: uvicorn.Config, app: RegistryApp) -> None:
        super().__init__(config)
        self.app = app
        self._drain_started: float | None = None

    async def on_tick(self, counter: int) -> bool:
        exiting = await super().on_tick(counter)
        if not (exiting and self.should_exit) or self.force_exit:
            return exiting
        if self._drain_started is None:
            self._drain_started = time.monotonic()
            self.app.draining = True
            if self.app.settings.shutdown_delay > 0:
                log.info("draining: not ready for %.0f s, then closing", self.app.settings.shutdown_delay)
        return time.monotonic() - self._drain_started >= self.app.settings.shutdown_delay


class ListenError(OSError):
    """The address cannot be listened on (taken, not ours, unknown host): said in one line."""


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket before uvicorn runs: uvicorn would log a taken port and exit
    with a status of its own (or, with workers, from inside its supervisor)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts rebind at once
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        raise ListenError(f"cannot listen on {shown}:{port}: {reason[:1].lower()}{reason[1:]}") from None
    sock.set_inheritable(True)  # worker processes serve it too
    return sock


def serve(settings: Settings) -> None:
    """Listen first (a taken port fails in one line), then open the storage (a bad --root fails
    before uvicorn starts), then serve."""
    sock = listen(settings.host, settings.port)
    try:
        _serve(settings, sock)
    finally:
        sock.close()


def _serve(settings: Settings, sock: socket.socket) -> None:
    app = create_app(settings)
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(settings.log_format, settings.log_level),
        access_log=False,  # the app writes its own, with route, repository and user
        http="registry.protocol:BoundedHttpToolsProtocol",
        loop="uvloop",
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )
    if settings.tls_cert:
        options.update(ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)
    if settings.workers > 1:
        # Each worker is uvicorn's own server: SIGTERM closes its listener at once
        # (shutdown_delay applies to single-process servers, one per container or unit).
        key = None
        if settings.ui and not settings.ui_session_key:  # one key for every worker's sessions
            key = _session_key_file()
            settings = dataclasses.replace(settings, ui_session_key=key)
        os.environ.update(to_environ(settings))
        os.environ.pop("PIER_CONFIG", None)  # already merged into the variables above
        config = uvicorn.Config(
            "registry.server:app_from_environ", factory=True, workers=settings.workers, **options
        )
        _log_listening(settings)
        folder = None
        if settings.metrics:  # where the workers show one another their metrics
            folder = os.environ[RUN_FOLDER_ENV] = run_folder()
        try:
            Multiprocess(config, sockets=[sock]).run()  # what uvicorn.run does, on our socket
        finally:
            if key is not None:
                os.unlink(key)
            if folder is not None:
                os.environ.pop(RUN_FOLDER_ENV, None)
                remove_run_folder(folder)
    else:
        server = DrainingServer(uvicorn.Config(app, **options), app)
        _log_listening(settings)
        server.run(sockets=[sock])


def _session_key_file() -> str:
    """A random secret in a private file, for the workers of this run to share."""
    descriptor, path = tempfile.mkstemp(prefix="pier-ui-session-")  # mode 0600
    with os.fdopen(descriptor, "wb") as file:
        file.write(secrets.token_urlsafe(48).encode())
    return path


def _log_listening(settings: Settings) -> None:
    """uvicorn says where it listens only when it binds the socket itself."""
    scheme = "https" if settings.tls_cert else "http"
    log.info("listening on %s://%s", scheme, settings.addr)
