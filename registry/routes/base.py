"""``/v2/``: the API version check clients probe first (to learn whether and how to log in)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..http import json_response
from .services import Services


async def base(services: Services, request: Request) -> Response:
    return json_response({})
