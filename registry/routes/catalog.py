"""``/v2/_catalog``: the repositories, only those the caller may pull, paginated."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..http import json_response
from .paging import page_size, paginate
from .services import Services


async def catalog(services: Services, request: Request) -> Response:
    n = page_size(request, services.settings.catalog_page_size)
    visible = [name for name in await services.store.repositories() if services.visible(request, name)]
    names, headers = paginate(visible, request, n, "/v2/_catalog")
    return json_response({"repositories": names}, headers=headers)
