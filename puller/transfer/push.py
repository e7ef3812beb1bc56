"""Send images to a registry: from the local store (``pier push``) or from another registry (``pier copy``).

Blobs go first, manifests after, children before the index that names them, so the
registry never sees a manifest whose content it lacks. Each blob is skipped when a
``HEAD`` finds it, mounted from another repository of the same registry when one is
known to hold it, and otherwise uploaded in one streamed ``PUT`` (POST, then PUT with
the digest). Bytes copied between registries are hashed on the way through: a source
that sends the wrong bytes fails the copy before the destination is asked to keep them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlencode

from oci.digest import digest_of
from oci.verify import Verifier, VerifyError

from ..errors import PierError
from ..reference import Reference
from ..store.content_store import ContentStore
from ..store.image import is_index, media_type_of, reachable, shareable
from ..store.platforms import Platform
from .pull import Progress, PullError, Remote
from .transport import RegistryRequestError, Transport, error_message

CHUNK = 1 << 20


class PushError(PierError):
    """A push or copy that cannot complete; the message is meant for the user as it is."""


class Held(Enum):
    """What the target registry holds of a blob, by a ``HEAD``."""

    ABSENT = "absent"
    WHOLE = "whole"
    WRONG_SIZE = "wrong size"  # a copy cut short (a full disk): mounting it would link it again


@dataclass
class BlobSource:
    """Where a blob's bytes come from, and which repositories of the target may already hold it."""

    open: Callable[[str], Iterator[bytes]]
    mount_candidates: Callable[[str], list[str]]
    # Local files hashed just before the upload: the registry's digest check on PUT is the
    # check, rather than hashing every byte a second time here.
    checked_by_registry: bool = False


def local_source(store: ContentStore, candidates: Callable[[str], list[str]] | None = None) -> BlobSource:
    def read(digest: str) -> Iterator[bytes]:
        with store.path(digest).open("rb") as stream:
            while block := stream.read(CHUNK):
                yield block

    return BlobSource(read, candidates or (lambda digest: []))


def remote_source(remote: Remote, mount_from: str | None) -> BlobSource:
    """Blobs streamed from another registry; ``mount_from`` when it is the same registry."""

    def read(digest: str) -> Iterator[bytes]:
        with remote.blob(digest) as response:
            if response.status_code != 200:
                raise PushError(f"source blob {digest}: {error_message(response)}")
            yield from response.iter_bytes(CHUNK)

    return BlobSource(read, lambda digest: [mount_from] if mount_from else [])


class _Verified:
    """The source's bytes, checked against the digest and size as they pass."""

    def __init__(self, chunks: Iterator[bytes], digest: str, size: int) -> None:
        self.chunks, self.digest, self.size = chunks, digest, size
        self.verifier = Verifier(digest, size)
        self.on_bytes: Callable[[int], None] = lambda done: None

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            try:
                self.verifier.update(chunk)
            except VerifyError:
                message = f"the source sent more than its {self.size} bytes"
                raise PushError(f"blob {self.digest}: {message}") from None
            self.on_bytes(self.verifier.received)
            yield chunk
        try:
            self.verifier.check()
        except VerifyError as exc:
            message = f"digest mismatch from the source, got {exc.actual}"
            raise PushError(f"blob {self.digest}: {message}") from None


def _counted(chunks: Iterator[bytes], on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    done = 0
    for chunk in chunks:
        done += len(chunk)
        on_bytes(done)
        yield chunk


class Pusher:
    def __init__(self, transport: Transport, reference: Reference, parallel: int = 4) -> None:
        self.transport = transport
        self.reference = reference
        self.parallel = max(1, parallel)
        self.scope = f"repository:{reference.path}:pull,push"
        self.base = f"/v2/{reference.path}"

    def has_blob(self, digest: str, size: int) -> Held:
        """Present means present whole: a registry whose copy has another length (a file cut
        short by a full disk) gets the blob uploaded again, and a registry that checks replaces it."""
        with self.transport.stream("HEAD", f"{self.base}/blobs/{digest}", self.scope) as response:
            if response.status_code == 404:
                return Held.ABSENT
            if response.status_code == 200:
                length = response.headers.get("content-length", "")
                whole = not (length.isascii() and length.isdigit()) or int(length) == size
                return Held.WHOLE if whole else Held.WRONG_SIZE
            raise PushError(f"{self.reference.name}: checking blob {digest}: {error_message(response)}")

    def mount(self, digest: str, source_path: str) -> bool:
        query = urlencode({"mount": digest, "from": source_path})
        scope = f"{self.scope} repository:{source_path}:pull"
        with self.transport.stream("POST", f"{self.base}/blobs/uploads/?{query}", scope) as response:
            if response.status_code == 201:
                return True
            location = response.headers.get("location")
        if location:  # 202: the registry opened an upload session instead; close it
            with self.transport.stream("DELETE", location, self.scope):
                pass
        return False

    def upload(self, digest: str, size: int, source: BlobSource, progress: Progress | None) -> None:
        report = progress or (lambda *args: None)
        with self.transport.stream("POST", f"{self.base}/blobs/uploads/", self.scope) as response:
            if response.status_code != 202 or "location" not in response.headers:
                raise PushError(f"{self.reference.name}: starting an upload: {error_message(response)}")
            location = response.headers["location"]
        separator = "&" if "?" in location else "?"
        target = f"{location}{separator}{urlencode({'digest': digest})}"

        def body() -> Iterable[bytes]:
            if source.checked_by_registry:
                return _counted(source.open(digest), lambda done: report(digest, "uploading", done, size))
            verified = _Verified(source.open(digest), digest, size)
            verified.on_bytes = lambda done: report(digest, "uploading", done, size)
            return verified

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with self.transport.stream("PUT", target, self.scope, headers, content=body) as response:
            if response.status_code != 201:
                raise PushError(f"{self.reference.name}: uploading blob {digest}: {error_message(response)}")

    def push_blob(self, descriptor: dict, source: BlobSource, progress: Progress | None) -> None:
        digest, size = descriptor["digest"], int(descriptor["size"])
        report = progress or (lambda *args: None)
        held = self.has_blob(digest, size)
        if held is Held.WHOLE:
            report(digest, "exists", size, size)
            return
        # The registry's blob store is shared by its repositories: a mount would link the damaged copy.
        candidates = source.mount_candidates(digest) if held is Held.ABSENT else []
        for candidate in candidates:
            if candidate != self.reference.path and self.mount(digest, candidate):
                report(digest, "mounted", size, size)
                return
        self.upload(digest, size, source, progress)
        report(digest, "pushed", size, size)

    def push_manifest(self, identifier: str, body: bytes, media_type: str) -> str:
        headers = {"Content-Type": media_type}
        path = f"{self.base}/manifests/{identifier}"
        with self.transport.stream("PUT", path, self.scope, headers, content=lambda: body) as response:
            if response.status_code != 201:
                raise PushError(f"{self.reference.name}: manifest {identifier}: {error_message(response)}")
        return digest_of(body)

    def push_image(
        self, body: bytes, source: BlobSource, progress: Progress | None, tag: str | None = None
    ) -> str:
        """Blobs (in parallel), then the manifest under ``tag`` or its digest; returns its digest."""
        manifest = json.loads(body)
        descriptors = [manifest["config"], *manifest.get("layers", [])]
        with ThreadPoolExecutor(self.parallel) as pool:
            list(pool.map(lambda d: self.push_blob(d, source, progress), descriptors))
        digest = digest_of(body)
        return self.push_manifest(tag or digest, body, media_type_of(body))


def push_tree(
    pusher: Pusher,
    body: bytes,
    read_manifest: Callable[[str], bytes],
    source: BlobSource,
    tag: str | None,
    progress: Progress | None,
) -> str:
    """Push an image or a whole index (every child first), then tag it; returns its digest."""
    document = json.loads(body)
    if not is_index(document):
        return pusher.push_image(body, source, progress, tag)
    for entry in document.get("manifests", []):
        child = read_manifest(entry["digest"])
        if is_index(json.loads(child)):
            push_tree(pusher, child, read_manifest, source, None, progress)
        else:
            pusher.push_image(child, source, progress)
    digest = digest_of(body)
    return pusher.push_manifest(tag or digest, body, media_type_of(body))


def run_transfer(action: Callable[[], str]) -> str:
    """Turn the transport's and the source's failures into one ``PushError``."""
    try:
        return action()
    except (RegistryRequestError, PullError) as exc:
        raise PushError(str(exc)) from None


def _local_holders(store: ContentStore, domain: str) -> dict[str, list[str]]:
    """digest -> repositories of ``domain`` that local tags say hold it (for mounting)."""
    holders: dict[str, list[str]] = {}
    for name, _, digest in store.refs():
        ref_domain, _, path = name.partition("/")
        if ref_domain != domain:
            continue
        for blob in reachable(store, digest):
            holders.setdefault(blob, [])
            if path not in holders[blob]:
                holders[blob].append(path)
    return holders


def push_local(
    store: ContentStore,
    digest: str,
    destination: Reference,
    platform: Platform,
    transport: Transport,
    parallel: int = 4,
    progress: Progress | None = None,
) -> tuple[str, str | None]:
    """Push a stored image; (pushed digest, a note when only one platform of an index could go)."""
    digest, note = shareable(store, digest, platform)
    body = store.read(digest)
    holders = _local_holders(store, destination.domain)
    source = local_source(store, lambda blob: holders.get(blob, []))
    pusher = Pusher(transport, destination, parallel)
    pushed = run_transfer(lambda: push_tree(pusher, body, store.read, source, destination.tag, progress))
    return pushed, note


def copy_remote(
    source: Reference,
    destination: Reference,
    platform: Platform | None,
    source_transport: Transport,
    destination_transport: Transport,
    parallel: int = 4,
    progress: Progress | None = None,
) -> str:
    """Copy an image between registries, streaming; the whole index unless ``platform`` narrows it."""
    remote = Remote(source_transport, source)

    def read_manifest(digest: str) -> bytes:
        return remote.fetch_manifest(digest)[0]

    def copy() -> str:
        body, _, _ = remote.fetch_manifest(source.identifier)
        if platform is not None and is_index(json.loads(body)):
            body = read_manifest(remote.choose(json.loads(body), platform)["digest"])
        same_registry = source.api_host == destination.api_host
        blobs = remote_source(remote, source.path if same_registry else None)
        pusher = Pusher(destination_transport, destination, parallel)
        return push_tree(pusher, body, read_manifest, blobs, destination.tag, progress)

    return run_transfer(copy)
