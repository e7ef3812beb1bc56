"""``/v2/{name}/blobs/uploads/``: blob uploads (whole, chunked, resumed) and cross-repository mounts."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import RegistryError
from ..governance.service import QuotaExceeded
from ..http import content_length, empty_response, has_body, parse_content_range
from ..limits import client_key
from ..references import Digest, validate_name
from ..uploads import Uploads, UploadSession
from .services import Services


def session_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "range": Uploads.range_header(size),
        "docker-upload-uuid": upload_id,
    }


def _add_session_headers(error: RegistryError, name: str, session: UploadSession) -> None:
    """A 416 tells the client where the upload stands, so it can resume from there."""
    if error.status == 416:
        error.headers.update(session_headers(name, session.id, session.size))


async def _admit(services: Services, request: Request, name: str, digest: Digest, size: int) -> None:
    try:
        await services.governance.admit_blob(name, digest, size)
    except QuotaExceeded as exc:
        await services.governance.quota_denied(services.actor(request), exc)
        raise


def _blob_created(name: str, digest: Digest) -> Response:
    return empty_response(
        201, {"location": f"/v2/{name}/blobs/{digest}", "docker-content-digest": str(digest)}
    )


async def start_upload(services: Services, request: Request, name: str) -> Response:
    query = request.query_params
    if "mount" in query:
        digest = Digest.parse(query["mount"])
        source = query.get("from")
        # A source the caller may not pull from is not mounted: a plain upload session
        # answers instead, exactly as for a blob the source lacks.
        if source and services.may_pull(request, validate_name(source)):
            try:
                size = await services.store.blob_size(source, digest)
            except RegistryError:
                size = None
            if size is not None:
                mounted = False
                try:
                    await _admit(services, request, name, digest, size)
                    mounted = await services.store.mount_blob(name, source, digest)
                finally:
                    services.governance.quotas.settle(name, digest, mounted)
                if mounted:
                    services.governance.index.blob_linked(name, digest, size)
                    return _blob_created(name, digest)
    elif "digest" in query:
        digest = Digest.parse(query["digest"])
        try:
            with services.governance.linking(name, digest):
                size = await services.uploads.put_monolithic(
                    name, digest, request.stream(), content_length(request)
                )
        except QuotaExceeded as exc:
            await services.governance.quota_denied(services.actor(request), exc)
            raise
        services.governance.index.blob_linked(name, digest, size)
        return _blob_created(name, digest)
    session = await services.uploads.start(
        name, query.get("digest-algorithm", "sha256"), owner=client_key(request.scope)
    )
    headers = session_headers(name, session.id, 0)
    headers["oci-chunk-min-length"] = str(services.settings.chunk_min_length)
    return empty_response(202, headers)


async def upload_status(services: Services, request: Request, name: str, uuid: str) -> Response:
    session = await services.uploads.get(name, uuid)
    return empty_response(204, session_headers(name, session.id, session.size))


async def patch_upload(services: Services, request: Request, name: str, uuid: str) -> Response:
    session = await services.uploads.get(name, uuid)
    header = request.headers.get("content-range")
    content_range = parse_content_range(header) if header else None
    try:
        await services.uploads.append(session, request.stream(), content_range, content_length(request))
    except RegistryError as error:
        _add_session_headers(error, name, session)
        raise
    return empty_response(202, session_headers(name, session.id, session.size))


async def finish_upload(services: Services, request: Request, name: str, uuid: str) -> Response:
    if "digest" not in request.query_params:
        raise RegistryError("DIGEST_INVALID", "the digest query parameter is required")
    digest = Digest.parse(request.query_params["digest"])
    session = await services.uploads.get(name, uuid)
    header = request.headers.get("content-range")
    content_range = parse_content_range(header) if header else None
    body = request.stream() if has_body(request) else None
    try:
        with services.governance.linking(name, digest):
            await services.uploads.finish(session, digest, body, content_range, content_length(request))
    except QuotaExceeded as exc:
        await services.governance.quota_denied(services.actor(request), exc)
        raise
    except RegistryError as error:
        _add_session_headers(error, name, session)
        raise
    services.governance.index.blob_linked(name, digest, session.size)
    return _blob_created(name, digest)


async def cancel_upload(services: Services, request: Request, name: str, uuid: str) -> Response:
    await services.uploads.cancel(name, uuid)
    return empty_response(204, {})
