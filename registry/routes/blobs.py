"""``/v2/{name}/blobs/{digest}``: fetch (ranges, redirects to storage, a mirror's pass-through), delete."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..governance.service import OVERRIDE
from ..http import ZERO_COPY, CuttableStreamingResponse, FileSendResponse, empty_response, parse_byte_range
from ..references import Digest
from .services import Services, blob_target

if TYPE_CHECKING:
    from ..mirror import Route


async def get_blob(services: Services, request: Request, name: str, digest: str) -> Response:
    parsed = Digest.parse(digest)
    route = await services.mirror_route(request, name)
    if route is not None:
        assert services.mirror is not None
        if not await services.mirror.cached(route, parsed):
            return await _mirror_blob(services, request, route, parsed)
        name = route.local
    size = await services.store.blob_size(name, parsed)
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
    await services.notify(request, "pull", name, blob_target(str(parsed), size))
    if services.settings.redirect:
        url = await services.store.blob_url(parsed, services.settings.redirect_expiry)
        if url is not None:  # the client fetches (and ranges) straight from the storage
            redirect = {"location": url, "docker-content-digest": str(parsed), "cache-control": "no-store"}
            return Response(b"", 307, redirect)
    if ZERO_COPY in request.scope.get("extensions", ()):  # plain HTTP: the kernel sends the file
        file = await services.store.open_blob(parsed)
        if file is not None:
            return FileSendResponse(file, offset, length, status, headers)
    return StreamingResponse(services.store.read_blob(parsed, offset, length), status, headers)


async def _mirror_blob(services: Services, request: Request, route: Route, digest: Digest) -> Response:
    """A blob the cache does not have yet: streamed while the mirror downloads it."""
    assert services.mirror is not None
    headers = {
        "content-type": "application/octet-stream",
        "docker-content-digest": str(digest),
        "etag": f'"{digest}"',
    }
    if request.method == "HEAD":
        headers["content-length"] = str(await services.mirror.upstream_size(route, digest))
        return Response(b"", 200, headers)
    download = await services.mirror.download(route, digest)
    if download is None:  # it reached the store meanwhile
        return await get_blob(services, request, route.local, str(digest))
    if download.size is not None:
        headers["content-length"] = str(download.size)
    await services.notify(request, "pull", route.local, blob_target(str(digest), download.size))
    if "range" in request.headers:  # ranges are served from the cache, once it has the blob
        await download.done()
        return await get_blob(services, request, route.local, str(digest))
    return CuttableStreamingResponse(download.follow(), 200, headers)


async def delete_blob(services: Services, request: Request, name: str, digest: str) -> Response:
    services.check_delete()
    parsed = Digest.parse(digest)
    override = request.query_params.get("override") == OVERRIDE
    await services.governance.check_blob_delete(services.actor(request), name, str(parsed), override)
    await services.store.delete_blob(name, parsed)
    await services.governance.deleted(services.actor(request), name, digest, kind="blob")
    await services.notify(request, "delete", name, {"digest": digest})
    return empty_response(202, {})
