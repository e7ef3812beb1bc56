"""``/v2/{name}/tags/list``: a repository's tags (a mirrored one's from its upstream), paginated."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import RegistryError
from ..http import json_response
from .paging import page_size, paginate
from .services import Services


async def list_tags(services: Services, request: Request, name: str) -> Response:
    route = await services.mirror_route(request, name)
    if route is not None:
        assert services.mirror is not None
        every = await services.mirror.tags(route)
    elif await services.store.repository_exists(name):
        every = await services.store.tags(name)
    else:
        raise RegistryError("NAME_UNKNOWN", name)
    n = page_size(request, None)
    tags, headers = paginate(every, request, n, f"/v2/{name}/tags/list")
    return json_response({"name": name, "tags": tags}, headers=headers)
