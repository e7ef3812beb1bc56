"""Pull an image into the local content store: resolve, pick the platform, fetch, verify.

The manifest is fetched once and checked against the digest that names it; the config
and layers are then downloaded in parallel (bounded), each streamed to a partial file
while its digest is computed, resumed with ``Range`` when an earlier attempt left part
of it, and published only when it verifies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

import httpx

from oci.digest import DEFAULT_ALGORITHM, Digest, DigestError
from oci.manifest import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE
from oci.mediatypes import MANIFEST_ACCEPT

from ..errors import PierError
from ..reference import Reference
from ..store.content_store import ContentStore, DigestMismatch
from ..store.image import InvalidDocument, check_document, is_index
from ..store.platforms import Platform
from .transport import Credentials, RegistryRequestError, Transport, error_message, read_capped

Progress = Callable[[str, str, int, int], None]  # (digest, state, done, total)


class PullError(PierError):
    """A pull that cannot complete; the message is meant for the user as it is."""


@dataclass
class PulledImage:
    reference: Reference
    digest: str  # of the image manifest that was pulled (a platform's, for an index)
    index_digest: str | None
    size: int  # bytes of config and layers


class Remote:
    """One repository of one registry, read over HTTP: manifests checked against their digests."""

    def __init__(self, transport: Transport, reference: Reference) -> None:
        self.transport = transport
        self.reference = reference
        self.scope = f"repository:{reference.path}:pull"

    def choose(self, index: dict, platform: Platform) -> dict:
        entries = index.get("manifests", [])
        for entry in entries:
            if platform.matches(entry.get("platform", {})):
                return entry
        offered = sorted({str(Platform.of(e["platform"])) for e in entries if "platform" in e})
        raise PullError(
            f"{self.reference.familiar()} has no image for {platform}; it has: {', '.join(offered) or 'none'}"
        )

    def fetch_manifest(self, identifier: str) -> tuple[bytes, str, str]:
        path = f"/v2/{self.reference.path}/manifests/{identifier}"
        with self.transport.stream("GET", path, self.scope, {"Accept": MANIFEST_ACCEPT}) as response:
            if response.status_code != 200:
                raise PullError(
                    f"{self.reference.familiar()}: manifest {identifier}: {error_message(response)}"
                )
            body = read_capped(response, MAX_MANIFEST_SIZE, f"manifest {identifier}")
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
        try:
            declared = check_document(body).get("mediaType")
        except InvalidDocument as exc:
            raise PullError(f"{self.reference.familiar()}: manifest {identifier} is invalid: {exc}") from None
        media_type = declared or media_type
        by_digest = ":" in identifier
        try:
            algorithm = Digest.parse(identifier).algorithm if by_digest else DEFAULT_ALGORITHM
        except DigestError as exc:
            raise PullError(f"{self.reference.familiar()}: manifest {identifier}: {exc}") from None
        digest = str(Digest.of(body, algorithm))
        if by_digest and digest != identifier:
            raise PullError(f"manifest digest mismatch: expected {identifier}, got {digest}")
        return body, media_type, digest

    def blob(
        self, digest: str, headers: dict[str, str] | None = None
    ) -> AbstractContextManager[httpx.Response]:
        """The response to ``GET`` of a blob, its body left to stream."""
        return self.transport.stream("GET", f"/v2/{self.reference.path}/blobs/{digest}", self.scope, headers)


class Puller:
    def __init__(self, store: ContentStore, remote: Remote, parallel: int = 4):
        self.store = store
        self.remote = remote
        self.reference = remote.reference
        self.parallel = max(1, parallel)

    def pull(self, platform: Platform, progress: Progress | None = None) -> PulledImage:
        body, _, digest = self.remote.fetch_manifest(self.reference.identifier)
        index_digest = index_body = None
        if is_index(json.loads(body)):  # by its checked shape: a Content-Type may say anything
            index_digest, index_body = digest, body
            child = self.remote.choose(json.loads(body), platform)
            body, _, digest = self.remote.fetch_manifest(child["digest"])
        manifest = json.loads(body)
        if is_index(manifest):
            raise PullError(f"{self.reference.familiar()}: the index names another index for {platform}")
        descriptors = [manifest["config"], *manifest.get("layers", [])]
        if manifest["config"]["size"] > MAX_CONFIG_SIZE:
            raise PullError(f"{self.reference.familiar()}: its config is larger than {MAX_CONFIG_SIZE} bytes")
        with ThreadPoolExecutor(self.parallel) as pool:
            list(pool.map(lambda d: self.fetch_blob(d["digest"], d["size"], progress), descriptors))
        self.store.put(digest, body)
        if index_digest is not None and index_body is not None:
            self.store.put(index_digest, index_body)
        size = sum(d["size"] for d in descriptors)
        return PulledImage(self.reference, digest, index_digest, size)

    def fetch_blob(self, digest: str, size: int, progress: Progress | None = None) -> None:
        report = progress or (lambda *args: None)
        if self.store.has(digest):
            report(digest, "exists", size, size)
            return
        with self.store.download(digest) as download:
            if download.already_done:
                report(digest, "exists", size, size)
                return
            headers = {"Range": f"bytes={download.offset}-"} if download.offset else {}
            with self.remote.blob(digest, headers) as response:
                if response.status_code == 200 and download.offset:
                    download.restart()  # the registry ignored the Range: start over
                elif response.status_code == 206 and not response.headers.get("content-range", "").startswith(
                    f"bytes {download.offset}-"
                ):
                    download.restart()  # never splice bytes from the wrong offset
                    raise PullError(f"blob {digest}: the registry answered a different range than asked")
                elif response.status_code not in (200, 206):
                    raise PullError(f"blob {digest}: {error_message(response)}")
                report(digest, "downloading", download.offset, size)
                for chunk in response.iter_bytes(1 << 20):
                    download.write(chunk)
                    if download.offset > size:
                        download.abort()
                        raise PullError(f"blob {digest} is larger than the {size} bytes its manifest says")
                    report(digest, "downloading", download.offset, size)
            try:
                download.commit()
            except DigestMismatch as exc:
                raise PullError(f"blob {exc.expected}: digest mismatch, got {exc.actual}") from None
        report(digest, "done", size, size)


def pull(
    reference: Reference,
    store: ContentStore,
    platform: Platform,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    parallel: int = 4,
    progress: Progress | None = None,
    ca_cert: str | None = None,
) -> PulledImage:
    transport = Transport(reference.api_host, insecure=insecure, credentials=credentials, ca_cert=ca_cert)
    try:
        with store.lock():
            image = Puller(store, Remote(transport, reference), parallel).pull(platform, progress)
            if reference.tag:
                store.set_ref(reference.name, reference.tag, image.index_digest or image.digest)
    except RegistryRequestError as exc:
        raise PullError(str(exc)) from None
    finally:
        transport.close()
    return image
