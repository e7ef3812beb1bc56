"""Build the ASGI app from settings and run it under uvicorn."""

from __future__ import annotations

import os

import uvicorn

from . import protocol
from .app import RegistryApp
from .backend import open_driver
from .config import Settings, load_settings, to_environ

S3_START_WAIT = 20.0  # seconds a starting server waits for its S3 store to answer


def create_app(settings: Settings) -> RegistryApp:
    protocol.configure(
        settings.max_header_size, settings.max_headers, settings.header_timeout, settings.idle_timeout
    )
    return RegistryApp(settings, open_driver(settings, wait=S3_START_WAIT))


def app_from_environ() -> RegistryApp:
    """Factory for uvicorn's worker processes: they read the settings from PIER_*."""
    return create_app(load_settings())


def serve(settings: Settings) -> None:
    """Open the storage here first, so a bad --root fails before uvicorn starts."""
    app = create_app(settings)
    options = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        http="registry.protocol:BoundedHttpToolsProtocol",
        loop="uvloop",
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=30,
    )
    if settings.tls_cert:
        options.update(ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)
    if settings.workers > 1:
        os.environ.update(to_environ(settings))
        os.environ.pop("PIER_CONFIG", None)  # already merged into the variables above
        uvicorn.run("registry.server:app_from_environ", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(app, **options)
