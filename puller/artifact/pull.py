"""Pull an artifact's files into a directory: every path checked before anything is written.

The manifest is checked against its digest, its config fetched and checked, then every
layer's path is validated together (relative, no ``..``, no duplicates, no file that is
another's directory) before the first byte lands. Files already in place, as the file
index recorded them when pier last wrote or hashed them, are not fetched again: an
interrupted pull resumes with the files it lacks. The rest come in parallel, biggest
first, each renamed into place once verified.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from oci.digest import digest_of
from oci.manifest import MAX_CONFIG_SIZE
from oci.mediatypes import IMAGE_CONFIGS

from ..errors import PierError
from ..reference import Reference
from ..store.content_store import ContentStore
from ..store.image import is_index
from ..store.platforms import Platform
from ..transfer.pull import Progress, PullError, Remote, range_min
from ..transfer.transport import (
    ConnectionLost,
    RegistryRequestError,
    Transport,
    error_message,
    is_loopback,
    read_capped,
)
from .fetch import RANGE_PARTS, FetchError, check_layer_path, fetch_raw, fetch_tar, packing_of
from .file_index import FileIndex
from .packing import matches
from .paths import Claims, UnsafePath, check_paths, stat_inside


class ArtifactError(PierError):
    """An artifact that cannot be pulled or read; the message says why."""


class Stopped(PierError):
    """A download stopped because another failed (that one's error is the one reported)."""


@dataclass
class Resolved:
    """An artifact's manifest and config, checked against their digests."""

    reference: Reference
    digest: str
    body: bytes
    manifest: dict
    config_body: bytes
    index_body: bytes | None = None
    index_digest: str | None = None

    @property
    def config(self) -> dict:
        try:
            value = json.loads(self.config_body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class PulledFiles:
    resolved: Resolved
    files: list[tuple[str, int, str]] = field(default_factory=list)  # path, size, fetched/present
    fetched: int = 0
    present: int = 0


def resolve(remote: Remote, platform: Platform | None = None) -> Resolved:
    """The artifact a reference names; an index is followed to its only entry, or the platform's."""
    reference = remote.reference
    body, _, digest = remote.fetch_manifest(reference.identifier)
    index_body = index_digest = None
    document = json.loads(body)
    if is_index(document):
        entries = document.get("manifests", [])
        chosen = entries[0] if len(entries) == 1 else remote.choose(document, platform or Platform.host())
        index_body, index_digest = body, digest
        body, _, digest = remote.fetch_manifest(chosen["digest"])
        document = json.loads(body)
        if is_index(document):
            raise ArtifactError(f"{reference.familiar()}: the index names another index")
    config = document["config"]
    if int(config["size"]) > MAX_CONFIG_SIZE:
        raise ArtifactError(f"{reference.familiar()}: its config is larger than {MAX_CONFIG_SIZE} bytes")
    with remote.blob(config["digest"]) as response:
        if response.status_code != 200:
            raise ArtifactError(
                f"{reference.familiar()}: config {config['digest']}: {error_message(response)}"
            )
        config_body = read_capped(response, MAX_CONFIG_SIZE, "config")
    if digest_of(config_body, config["digest"].split(":")[0]) != config["digest"]:
        raise ArtifactError(f"{reference.familiar()}: config digest mismatch: expected {config['digest']}")
    return Resolved(reference, digest, body, document, config_body, index_body, index_digest)


def artifact_paths(manifest: dict) -> list[tuple[dict, str]]:
    """(layer, path) of every layer, all validated together; ``UnsafePath`` names the first bad one."""
    if (manifest.get("config") or {}).get("mediaType") in IMAGE_CONFIGS:
        raise ArtifactError("this is a container image, not an artifact: use pier pull (and pier unpack)")
    pairs = [(layer, check_layer_path(layer)) for layer in manifest.get("layers", [])]
    check_paths(path for _, path in pairs)
    return pairs


def remember(store: ContentStore, resolved: Resolved) -> None:
    """Keep the manifest and config locally (for ``pier model ls``/``inspect`` and mounts) and tag it."""
    with store.lock():
        store.put(resolved.manifest["config"]["digest"], resolved.config_body)
        store.put(resolved.digest, resolved.body)
        if resolved.index_body is not None and resolved.index_digest is not None:
            store.put(resolved.index_digest, resolved.index_body)
        reference = resolved.reference
        if reference.tag:
            store.set_ref(reference.name, reference.tag, resolved.index_digest or resolved.digest)


def _save_every_second(index: FileIndex, stop: threading.Event) -> None:
    """What a pull finished, written down as it goes: a killed pull does not fetch it again."""
    while not stop.wait(1.0):
        index.save(prune=False)


def range_parts(domain: str, parallel: int, big_files: int) -> int:
    """Ranges per big file: enough to use ``parallel`` connections, no more.

    Ranges fill a link one TCP stream cannot (latency times window); on loopback there is
    no such link, and one stream per file is cheaper (measured: 2.9 s against 3.7 s for
    1.5 GiB). ``PIER_PULL_RANGES`` sets it.
    """
    text = os.environ.get("PIER_PULL_RANGES", "")
    if text.isdigit() and int(text) > 0:
        return int(text)
    if is_loopback(domain):
        return 1
    return max(1, min(RANGE_PARTS, parallel // max(1, big_files)))


def fetch_files(
    remote: Remote,
    pairs: list[tuple[dict, str]],
    target: Path,
    index: FileIndex,
    parallel: int = 4,
    progress: Progress | None = None,
) -> PulledFiles:
    """Write the layers' files under ``target``; files the index shows in place are kept."""
    report = progress or (lambda *args: None)
    result = PulledFiles(Resolved(remote.reference, "", b"", {}, b""))
    claims = Claims(path for layer, path in pairs if packing_of(layer) == "raw")
    big = sum(1 for layer, _ in pairs if packing_of(layer) == "raw" and int(layer["size"]) >= range_min())
    parts = range_parts(remote.reference.domain, parallel, big)
    lock = threading.Lock()

    def one(layer: dict, path: str) -> None:
        digest, size = layer["digest"], int(layer["size"])
        tar = packing_of(layer) != "raw"
        final = target / path
        if not tar:
            info = stat_inside(target, path)
            if info is not None and index.lookup(final, info) == digest:
                report(digest, "exists", size, size)
                with lock:
                    result.files.append((path, size, "present"))
                    result.present += size
                return
        report(digest, "downloading", 0, size)

        def moved(done: int) -> None:
            if stop.is_set():  # another file failed, or Ctrl-C: stop at the next MiB
                raise Stopped(f"{path}: stopped")
            report(digest, "downloading", done, size)

        try:
            if tar:
                fetch_tar(remote, layer, target, claims, moved)
            else:
                placed = fetch_raw(remote, layer, target, path, moved, parts)
                index.record(final, placed, digest)  # pier wrote and verified it: trusted
        except (RegistryRequestError, ConnectionLost) as exc:
            raise PullError(f"{path}: {exc}") from None
        index.seen(digest, remote.reference.domain, remote.reference.path)
        report(digest, "done", size, size)
        with lock:
            result.files.append((path, size, "fetched"))
            result.fetched += size

    target.mkdir(parents=True, exist_ok=True)
    ordered = sorted(pairs, key=lambda pair: -int(pair[0]["size"]))
    stop = threading.Event()
    saver = threading.Thread(target=_save_every_second, args=(index, stop), name="index saver", daemon=True)
    saver.start()
    try:
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            jobs = [pool.submit(one, layer, path) for layer, path in ordered]
            try:
                for job in as_completed(jobs):
                    job.result()  # the first failure stops the others
            except BaseException:
                stop.set()
                for job in jobs:
                    job.cancel()
                raise
    finally:
        stop.set()
        saver.join()
        index.save()
    result.files.sort()
    return result


def pull_files(
    transport: Transport,
    reference: Reference,
    target: Path,
    store: ContentStore,
    index: FileIndex,
    include: list[str] | None = None,
    parallel: int = 4,
    progress: Progress | None = None,
    check: Callable[[Resolved], None] | None = None,
) -> PulledFiles:
    """``pier model pull REF DIR`` and ``pier artifact pull``: resolve, validate, fetch, remember."""
    remote = Remote(transport, reference)
    try:
        resolved = resolve(remote)
        if check is not None:
            check(resolved)
        pairs = artifact_paths(resolved.manifest)
        if include:
            pairs = [(layer, path) for layer, path in pairs if matches(path, include)]
            if not pairs:
                raise ArtifactError(f"no file of {reference.familiar()} matches {', '.join(include)}")
        pulled = fetch_files(remote, pairs, target, index, parallel, progress)
    except (RegistryRequestError, FetchError, UnsafePath) as exc:
        raise ArtifactError(str(exc)) from None
    pulled.resolved = resolved
    remember(store, resolved)
    return pulled
