"""``/healthz``, ``/readyz`` and ``/metrics``: for orchestrators and Prometheus; never limited."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from .. import layout
from ..http import json_response
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..space import NO_SPACE
from .services import Services

log = logging.getLogger("pier.registry")
READY_TIMEOUT = 5.0  # seconds the store has to answer a readiness check


async def healthz(services: Services, request: Request) -> Response:
    """Alive: the process answers. Nothing else is checked, so a slow store never restarts it."""
    return json_response({"status": "alive"})


async def readyz(services: Services, request: Request) -> Response:
    """Ready: not draining, the store answers, and a mirror can write to its cache."""
    if services.draining:
        return json_response({"status": "draining"}, 503)
    try:
        await asyncio.wait_for(_check_storage(services), READY_TIMEOUT)
    except Exception as exc:
        log.warning("not ready: storage check failed: %s", exc)
        return json_response({"status": "storage unavailable"}, 503)
    try:
        writable = await asyncio.wait_for(services.space.writable(services.store.driver), READY_TIMEOUT)
    except Exception as exc:
        log.warning("not ready: free space check failed: %s", exc)
        writable = False
    if not writable:
        return json_response({"status": "storage full", "reason": f"{NO_SPACE}: writes fail"}, 503)
    return json_response({"status": "ready"})


async def _check_storage(services: Services) -> None:
    driver = services.store.driver
    await driver.list_children(layout.REPOSITORIES)
    if services.mirror is not None:
        await driver.put_content(layout.HEALTH_PROBE, b"ok")


async def serve_metrics(services: Services, request: Request) -> Response:
    assert services.metrics is not None
    body = await services.metrics.render(services.store.driver)
    return Response(body, 200, media_type=METRICS_CONTENT_TYPE)
