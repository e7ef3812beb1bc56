"""HTTP clients that a server tells apart by address: loopback has all of 127.0.0.0/8, so a
socket bound to 127.0.0.2 is another client than one from 127.0.0.1 (limits per client)."""

from __future__ import annotations

from typing import Any

import httpx

from .servers import PierServer

GREEDY = "127.0.0.2"
OTHER_GREEDY = "127.0.0.3"


def client_from(server: PierServer, address: str, **kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address``."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.url, transport=transport, timeout=30, **kwargs)
