"""Commands that read or change a registry without the local store: inspect, tags, delete.

They are skopeo's ``inspect``, ``list-tags`` and ``delete`` (and crane's ``manifest``,
``config``, ``ls``). Every answer is untrusted: bodies are read up to a bound, documents
are checked against their digests, and a tag list must be a list of strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import httpx

from oci.digest import is_valid
from oci.jsonsafe import UntrustedJSONError, loads
from oci.manifest import MAX_CONFIG_SIZE
from oci.mediatypes import INDEX_TYPES
from oci.policy import same_origin
from oci.reference import is_tag
from oci.verify import VerifyError, verify_bytes

from ..errors import PierError
from ..reference import Reference
from ..store.image import is_index
from ..store.inspection import Inspected
from ..store.platforms import Platform
from .pull import Remote
from .transport import Transport, error_message, read_capped

MAX_TAGS_PAGE = 16 * 1024 * 1024
MAX_TAG_PAGES = 10_000  # 10,000 pages of even 100 tags is more than any real repository


class RemoteError(PierError):
    """A registry's answer that an inspect, tags or delete cannot use; the message says why."""


def _json_object(body: bytes, what: str) -> dict:
    try:
        document = loads(body)
    except UntrustedJSONError as exc:
        raise RemoteError(f"{what} is not usable JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RemoteError(f"{what} is not a JSON object")
    return document


def fetch_config(remote: Remote, descriptor: dict) -> tuple[bytes, dict]:
    """An image config, read within its declared size and checked against its digest."""
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not is_valid(digest) or not isinstance(size, int) or size < 0:
        raise RemoteError("the manifest's config descriptor has no valid digest and size")
    if size > MAX_CONFIG_SIZE:
        raise RemoteError(f"config {digest} is {size} bytes, more than {MAX_CONFIG_SIZE}")
    with remote.blob(digest) as response:
        if response.status_code != 200:
            raise RemoteError(f"config {digest}: {error_message(response)}")
        body = read_capped(response, size, f"config {digest}")
    try:
        verify_bytes(body, digest)
    except VerifyError:
        raise RemoteError(f"config {digest}: the registry sent bytes with another digest") from None
    return body, _json_object(body, f"config {digest}")


def inspect_remote(transport: Transport, reference: Reference, platform: Platform | None) -> Inspected:
    """The document ``reference`` names; with a platform, also that platform's manifest and config.

    Without a platform (``--raw``) only the named document is fetched, so an index whose
    platforms do not include this machine's can still be shown.
    """
    remote = Remote(transport, reference)
    body, media_type, digest = remote.fetch_manifest(reference.identifier)
    top = _json_object(body, f"manifest {digest}")
    found = Inspected(str(reference), digest, body, None)
    if platform is None:
        return found
    manifest, manifest_digest = top, digest
    if media_type in INDEX_TYPES or is_index(top):
        found.index = top
        entry = remote.choose(top, platform)
        child, _, manifest_digest = remote.fetch_manifest(str(entry.get("digest", "")))
        manifest = _json_object(child, f"manifest {manifest_digest}")
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise RemoteError(f"manifest {manifest_digest} has no config descriptor")
    found.manifest_digest, found.manifest = manifest_digest, manifest
    found.config_body, found.config = fetch_config(remote, config)
    return found


def _next_page(response: httpx.Response, base_url: str) -> str | None:
    """The path and query of the ``rel="next"`` Link, which must stay on this registry.

    A link to another host is refused: following it would send this registry's
    credentials there.
    """
    link = response.links.get("next", {}).get("url")
    if not link:
        return None
    absolute = urljoin(str(response.request.url), link)
    target = urlsplit(absolute)
    if not same_origin(absolute, base_url):
        raise RemoteError(f"the next page of tags is on another host ({target.netloc[:100]}): not followed")
    return target.path + (f"?{target.query}" if target.query else "")


def iter_tags(transport: Transport, reference: Reference, page_size: int | None = None) -> Iterator[str]:
    """Every tag of the repository, following the ``Link`` header from page to page."""
    path: str | None = f"/v2/{reference.path}/tags/list" + (f"?n={page_size}" if page_size else "")
    scope = f"repository:{reference.path}:pull"
    seen: set[str] = set()
    for _ in range(MAX_TAG_PAGES):
        if path is None:
            return
        if path in seen:
            raise RemoteError("the registry's tag pages link back to an earlier page")
        seen.add(path)
        with transport.stream("GET", path, scope, {"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise RemoteError(f"{reference.familiar()}: tags: {error_message(response)}")
            body = read_capped(response, MAX_TAGS_PAGE, "a page of tags")
            path = _next_page(response, transport.base_url)
        tags = _json_object(body, "the tag list").get("tags")
        if tags is None:
            tags = []  # distribution's answer for a repository whose tags were all deleted
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise RemoteError("the registry's tag list is not a list of strings")
        for tag in tags:  # printed to a terminal and made into references: nothing but a tag
            if not is_tag(tag):
                raise RemoteError(f"the registry listed an invalid tag {tag[:80]!r}")
        yield from tags
    raise RemoteError(f"the registry's tag list goes on past {MAX_TAG_PAGES} pages")


def delete_manifest(transport: Transport, reference: Reference) -> str:
    """Delete the manifest a reference names, as skopeo does: a tag is resolved to its digest first.

    Deleting by digest removes the manifest and every tag pointing at it, on every
    registry (some refuse to delete a tag alone). Returns the digest deleted.
    """
    digest = reference.digest
    if digest is None:
        _, _, digest = Remote(transport, reference).fetch_manifest(reference.identifier)
    path = f"/v2/{reference.path}/manifests/{digest}"
    with transport.stream("DELETE", path, f"repository:{reference.path}:delete") as response:
        if response.status_code not in (200, 202, 204):
            raise RemoteError(
                f"{reference.familiar()}: the registry refused the delete: {error_message(response)}"
            )
    return digest
