"""Push an artifact's layers straight from their files, then its config and manifest.

Digests come from the file index where it knows the file; the others are hashed by one
thread, smallest file first, while the uploads of the files already hashed run (so the
first upload starts after the smallest hash, not after all of them). Each blob is then
skipped when the registry has it, mounted from another repository of the same registry
that pier saw holding it, or uploaded from the file in one streamed ``PUT``. The registry
checks the digest of what it receives; a file changed after it was hashed fails there,
and is reported as changed.
"""

from __future__ import annotations

import datetime
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from oci.digest import digest_of
from oci.mediatypes import OCI_MANIFEST

from ..reference import Reference
from ..transfer.pull import Progress
from ..transfer.push import BlobSource, Pusher, PushError
from ..transfer.transport import RegistryRequestError, Transport
from .file_index import FileIndex, hash_file
from .packing import Layer

READ_BLOCK = 4 << 20
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"


@dataclass
class PushedArtifact:
    digest: str
    manifest: dict
    uploaded: int = 0  # blob bytes sent
    skipped: int = 0  # blob bytes the registry had or mounted
    hashed: int = 0  # bytes hashed (files the index did not know)
    states: dict[str, str] = field(default_factory=dict)  # digest -> exists/mounted/pushed


def _read_exactly(path: Path, size: int) -> Iterator[bytes]:
    """The file's first ``size`` bytes; a file that shrank since it was hashed is an error."""
    with open(path, "rb", buffering=0) as stream:
        left = size
        while left:
            block = stream.read(min(READ_BLOCK, left))
            if not block:
                raise PushError(f"{path} changed while it was pushed (it is shorter than when hashed)")
            left -= len(block)
            yield block


def _hash_in_order(layers: list[Layer], index: FileIndex, ready: queue.Queue[Layer | BaseException]) -> int:
    """Hash what the index does not know, smallest first, handing each layer on as its digest is known."""
    hashed = 0
    for layer in layers:
        if not layer.digest:
            try:
                if layer.info is not None:
                    layer.digest, info, _ = index.digest_of(layer.source)
                    if info.st_size != layer.size:
                        raise PushError(f"{layer.source} changed while it was pushed")
                else:
                    layer.digest, _ = hash_file(layer.source, layer.size)
            except (OSError, PushError) as exc:
                ready.put(exc if isinstance(exc, PushError) else PushError(f"reading {layer.source}: {exc}"))
                return hashed
            hashed += layer.size
        ready.put(layer)
    return hashed


def push_artifact(
    transport: Transport,
    reference: Reference,
    layers: list[Layer],
    config: tuple[str, bytes] | Callable[[list[Layer]], tuple[str, bytes]],
    artifact_type: str | None,
    index: FileIndex,
    *,
    annotations: dict[str, str] | None = None,
    subject: dict | None = None,
    parallel: int = 4,
    progress: Progress | None = None,
) -> PushedArtifact:
    """Push ``layers`` and the manifest naming them under ``reference``'s tag (or its digest).

    ``config`` is (media type, bytes), or a function that makes them once every layer's
    digest is known (a model config lists them).
    """
    report = progress or (lambda *args: None)
    pusher = Pusher(transport, reference, parallel)
    domain = reference.domain
    result = PushedArtifact("", {})
    lock = threading.Lock()

    def counted(digest: str, state: str, done: int, total: int) -> None:
        if state in ("exists", "mounted", "pushed"):
            with lock:
                result.states[digest] = state
                if state == "pushed":
                    result.uploaded += total
                else:
                    result.skipped += total
        report(digest, state, done, total)

    def send(layer: Layer) -> None:
        blobs = BlobSource(
            lambda digest: _read_exactly(layer.source, layer.size),
            lambda digest: index.holders(digest, domain),
            checked_by_registry=True,
        )
        try:
            pusher.push_blob(layer.descriptor(), blobs, counted)
        except PushError as exc:
            if "DIGEST_INVALID" in str(exc):  # the registry got other bytes than were hashed
                raise PushError(f"{layer.source} changed while it was pushed: {exc}") from None
            raise

    ordered = sorted(layers, key=lambda layer: (bool(layer.digest) is False, layer.size))
    ready: queue.Queue[Layer | BaseException] = queue.Queue()
    try:
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            hashing = threading.Thread(
                target=lambda: setattr(result, "hashed", _hash_in_order(ordered, index, ready)), daemon=True
            )
            hashing.start()
            jobs: list[Future[None]] = []
            failure: BaseException | None = None
            for _ in ordered:
                item = ready.get()
                if isinstance(item, BaseException):
                    failure = item
                    break
                jobs.append(pool.submit(send, item))
            hashing.join()
            for job in jobs:
                job.result()
            if failure is not None:
                raise failure
        for layer in layers:
            index.seen(layer.digest, domain, reference.path)
        config_type, config_body = config(layers) if callable(config) else config
        config_digest = digest_of(config_body)
        config_descriptor = {"mediaType": config_type, "digest": config_digest, "size": len(config_body)}
        config_source = BlobSource(
            lambda digest: iter([config_body]), lambda digest: index.holders(digest, domain)
        )
        pusher.push_blob(config_descriptor, config_source, counted)
        index.seen(config_digest, domain, reference.path)
        manifest: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if artifact_type:
            manifest["artifactType"] = artifact_type
        manifest["config"] = config_descriptor
        manifest["layers"] = [layer.descriptor() for layer in layers]
        if subject is not None:
            manifest["subject"] = subject
        if annotations:
            manifest["annotations"] = annotations
        body = json.dumps(manifest, indent=2).encode()
        result.digest = pusher.push_manifest(reference.tag or digest_of(body), body, OCI_MANIFEST)
        result.manifest = manifest
    except RegistryRequestError as exc:
        raise PushError(str(exc)) from None
    finally:
        index.save()
    return result


def newest_time(layers: list[Layer]) -> str:
    """The newest change among the files, RFC 3339: a stable ``createdAt``, so an unchanged
    directory gives the same config blob (and a re-push sends nothing)."""
    newest = max((layer.mtime for layer in layers), default=0.0)
    return datetime.datetime.fromtimestamp(int(newest), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
