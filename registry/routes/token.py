"""``/auth/token``: the token server, when this registry is one (it checks its own credentials)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .services import Services


async def issue_token(services: Services, request: Request) -> Response:
    assert services.token_server is not None
    return await services.token_server(request)
