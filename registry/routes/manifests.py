"""``/v2/{name}/manifests/{reference}``: fetch (with content negotiation), push and delete manifests."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import RegistryError
from ..governance.service import OVERRIDE, QuotaExceeded
from ..http import RawResponse, empty_response, read_limited
from ..manifests import MANIFEST_TYPES
from ..references import Digest, is_digest, lookup_reference, validate_tag
from .services import Services, manifest_target, tag_of

MAX_TAGS_PER_PUT = 100


async def get_manifest(services: Services, request: Request, name: str, reference: str) -> Response:
    lookup_reference(reference)  # neither tag nor digest: 404 MANIFEST_UNKNOWN, upstream unasked
    route = None
    if services.mirror is not None:
        route = await services.mirror_route(request, name)
        if route is not None:
            await services.mirror.manifest(route, reference)
            name = route.local
    record = await services.store.resolve(name, reference)
    if request.method == "GET" or not is_digest(reference):  # docker pulls a tag by HEAD, then GET
        services.governance.pulls.pulled(name, reference)
    if route is not None:
        assert services.mirror is not None
        await services.mirror.pulled(route, record.digest)
    accepted = accepted_types(request.scope["headers"])
    if accepted and record.media_type not in accepted:
        # Clients that list manifest types but not this one cannot use it.
        raise RegistryError(
            "MANIFEST_UNKNOWN", f"manifest is {record.media_type}, which the Accept header does not list"
        )
    digest = str(record.digest)
    encoded = digest.encode()
    headers = [
        (b"content-type", record.media_type.encode("latin-1")),
        (b"docker-content-digest", encoded),
        (b"etag", b'"' + encoded + b'"'),
        (b"content-length", str(record.size).encode()),
    ]
    if request.method == "HEAD":
        return RawResponse(200, headers)
    body = await services.store.manifest_body(record)
    target = manifest_target(record.media_type, digest, record.size)
    await services.notify(request, "pull", name, {**target, **tag_of(reference)})
    return RawResponse(200, headers, body)


async def put_manifest(services: Services, request: Request, name: str, reference: str) -> Response:
    body = await read_limited(request, services.settings.max_manifest_size, "manifest")
    tags = request.query_params.getlist("tag")
    if len(tags) > MAX_TAGS_PER_PUT:
        raise RegistryError("TAG_INVALID", f"at most {MAX_TAGS_PER_PUT} tag parameters per request")
    governance, actor = services.governance, services.actor(request)
    every_tag = tags if is_digest(reference) else [reference, *tags]
    for tag in every_tag:
        validate_tag(tag)  # before any is looked up
    expected = Digest.parse(reference) if is_digest(reference) else Digest.of(body)
    async with governance.tags_locked(name, every_tag):
        previous = await governance.check_tags(actor, name, every_tag, expected)
        with governance.linking(name, expected):
            try:
                await governance.admit_blob(name, expected, len(body))
            except QuotaExceeded as exc:
                await governance.quota_denied(actor, exc)
                raise
            digest, manifest = await services.store.put_manifest(
                name, reference, body, request.headers.get("content-type"), tags
            )
    governance.index.pushed(name, digest, len(body), every_tag, [(d.digest, d.size) for d in manifest.blobs])
    await governance.pushed(actor, name, digest, every_tag, previous)
    target = manifest_target(manifest.media_type, str(digest), len(body))
    for tag in ([] if is_digest(reference) else [reference]) + tags or [""]:
        await services.notify(request, "push", name, {**target, **({"tag": tag} if tag else {})})
    response = empty_response(
        201, {"location": f"/v2/{name}/manifests/{digest}", "docker-content-digest": str(digest)}
    )
    if manifest.subject is not None:
        response.headers["oci-subject"] = str(manifest.subject.digest)
    for tag in tags if is_digest(reference) else []:
        response.headers.append("oci-tag", tag)
    return response


async def delete_manifest(services: Services, request: Request, name: str, reference: str) -> Response:
    services.check_delete()
    lookup_reference(reference)
    actor = services.actor(request)
    override = request.query_params.get("override") == OVERRIDE
    await services.governance.check_delete(actor, name, reference, override)
    await services.store.delete_manifest(name, reference)
    await services.governance.deleted(actor, name, reference)
    target: dict[str, object] = {"digest": reference} if is_digest(reference) else {**tag_of(reference)}
    await services.notify(request, "delete", name, target)
    return empty_response(202, {})


def accepted_types(headers: list[tuple[bytes, bytes]]) -> set[str]:
    """Manifest media types the client listed; empty means it takes anything."""
    types: set[str] = set()
    for key, value in headers:
        if key != b"accept":
            continue
        for part in value.decode("latin-1").split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if media_type in ("*/*", "application/*"):
                return set()
            types.add(media_type)
    if not types & MANIFEST_TYPES:
        return set()  # e.g. only application/json: not a manifest negotiation at all
    return types
