"""Pull an image into the local content store: resolve, pick the platform, fetch, verify, unpack.

The manifest is fetched once and checked against the digest that names it, then the
config. The layers are then downloaded in parallel (bounded), each streamed to a partial
file while its digest is computed, resumed with ``Range`` when an earlier attempt left
part of it, and published only when it verifies. Each layer is unpacked into the layer
store while its bytes arrive (one directory per layer, so layers unpack in parallel
too), and becomes usable only once both its digest and its diff ID have checked out.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

import httpx

from oci.digest import DEFAULT_ALGORITHM, Digest, DigestError
from oci.jsonsafe import loads
from oci.manifest import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE
from oci.mediatypes import IMAGE_CONFIGS, MANIFEST_ACCEPT
from oci.verify import VerifyError

from ..errors import PierError
from ..reference import Reference
from ..store.content_store import BlobDownload, ContentStore, DigestMismatch, keep_layer_blobs
from ..store.image import Image, ImageError, InvalidDocument, check_document, is_index
from ..store.platforms import Platform
from ..unpack.layer_store import LayerStore, ReadStream, verified
from ..unpack.layers import BrokenLayer, LayerDigestMismatch
from ..unpack.limits import UnpackLimits
from ..unpack.workers import Unpackers, worker_count
from .ranged import RangedBlob
from .raw_body import RawResponse
from .transport import Credentials, RegistryRequestError, Transport, error_message, read_capped

Progress = Callable[[str, str, int, int], None]  # (digest, state, done, total)
CHUNK = 1 << 20
QUEUED_CHUNKS = 8  # received and not yet unpacked, per layer
RANGE_MIN = 64 * 1024 * 1024  # a layer blob this big is fetched in parallel ranges
RANGE_PARTS = 4


def range_min() -> int:
    """``PIER_PULL_RANGE_MIN`` (bytes; default 64 MiB): from this size a layer comes in parallel ranges."""
    text = os.environ.get("PIER_PULL_RANGE_MIN", "")
    return int(text) if text.strip().isdigit() else RANGE_MIN


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

    def raw_blob(self, digest: str, headers: dict[str, str] | None = None) -> RawResponse | None:
        """The blob's body straight off a socket, or None: then ``blob`` (httpx) it is."""
        return self.transport.raw_get(f"/v2/{self.reference.path}/blobs/{digest}", self.scope, headers)

    def blob(
        self, digest: str, headers: dict[str, str] | None = None
    ) -> AbstractContextManager[httpx.Response]:
        """The response to ``GET`` of a blob, its body left to stream."""
        return self.transport.stream("GET", f"/v2/{self.reference.path}/blobs/{digest}", self.scope, headers)


class _Tee(ReadStream):
    """A blob's bytes as they arrive from the registry, written to the store on the way.

    A thread of its own receives the blob, writes it to the partial file and hashes it,
    handing each piece on through a short queue; the unpacker reads them like a file,
    inflating and writing in parallel with the download. ``finish`` reads
    what the unpacker left, then verifies and publishes the blob (or, when blobs are not
    kept, only verifies it): a layer is never used before that.
    """

    def __init__(self, puller: Puller, download: BlobDownload, size: int, report: Progress) -> None:
        assert download.offset == 0, "a partial download is resumed by fetch_blob, then unpacked from disk"
        self.puller = puller
        self.download = download
        self.size = size
        self.report = report
        self.digest = download.digest
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._stopping = threading.Event()
        self._done = False
        self._buffer = b""
        self._at = 0
        self._thread = threading.Thread(target=self._produce, name=f"fetch {self.digest[:19]}", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            with self.puller.remote.blob(self.digest) as response:
                if response.status_code != 200:
                    raise PullError(f"blob {self.digest}: {error_message(response)}")
                for chunk in response.iter_bytes(CHUNK):
                    if self._stopping.is_set():
                        return
                    if self.puller.keep_blobs:
                        self.download.write(chunk)
                    else:
                        self.download.feed(chunk)  # only the unpacked layer stays: no disk for the blob
                    if self.download.offset > self.size:
                        self.download.abort()
                        raise PullError(
                            f"blob {self.digest} is larger than the {self.size} bytes its manifest says"
                        )
                    self.report(self.digest, "downloading", self.download.offset, self.size)
                    self._put(chunk)
            self._put(None)
        except BaseException as exc:  # handed to the reader, which raises it in its own thread
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stopping.is_set():  # a reader that gave up must not leave this thread blocked
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1, /) -> bytes:
        if self._at >= len(self._buffer):
            if self._done:
                return b""
            item = self._queue.get()
            if item is None or isinstance(item, BaseException):
                self._done = True
                if item is not None:
                    raise item
                return b""
            self._buffer, self._at = item, 0
        buffer, at = self._buffer, self._at
        if at == 0 and (size < 0 or size >= len(buffer)):
            self._at = len(buffer)
            return buffer  # the whole piece, not copied
        end = len(buffer) if size < 0 else min(len(buffer), at + size)
        self._at = end
        return buffer[at:end]  # an offset, not a slice of the rest: small reads stay linear

    def finish(self, layer: str) -> None:
        while self.read(CHUNK):
            pass
        try:
            if self.puller.keep_blobs:
                self.download.commit()
            else:
                self.download.check()
        except DigestMismatch as exc:
            raise PullError(f"blob {exc.expected}: digest mismatch, got {exc.actual}") from None

    def mismatch(self) -> str | None:
        """After a failed unpack: whether the bytes were the blob's at all (the likelier cause)."""
        try:
            while self.read(CHUNK):
                pass
        except (PierError, httpx.HTTPError, OSError):
            return None
        try:
            self.download.check()  # drops the partial bytes either way: they cannot be unpacked
        except DigestMismatch as exc:
            return f"blob {exc.expected}: digest mismatch, got {exc.actual}"
        return None

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()


class _RangedTee(ReadStream):
    """A big layer blob in parallel ranges (``ranged.RangedBlob``), always published to the store.

    Ranges land in a file anyway, so they are used only where the blob is kept (or is
    unpacked from disk afterwards): without kept blobs a layer streams on one connection.
    """

    def __init__(self, puller: Puller, download: BlobDownload, size: int, report: Progress) -> None:
        self.puller = puller
        self.download = download
        self.digest = download.digest
        self.blob = RangedBlob(
            lambda headers: puller.remote.blob(download.digest, headers),
            download.digest,
            size,
            download.ranges_path,
            RANGE_PARTS,
            lambda done: report(download.digest, "downloading", done, size),
        )

    def read(self, size: int = -1, /) -> bytes:
        return self.blob.read(size)

    def finish(self, layer: str) -> None:
        while self.blob.read(CHUNK):
            pass
        self.blob.fsync()
        try:
            self.download.publish(self.download.ranges_path, self.blob.verifier)
        except DigestMismatch as exc:
            raise PullError(f"blob {exc.expected}: digest mismatch, got {exc.actual}") from None

    def mismatch(self) -> str | None:
        try:
            while self.blob.read(CHUNK):
                pass
            self.blob.verifier.check()
        except VerifyError as exc:
            return f"blob {self.digest}: digest mismatch, got {exc.actual}"
        except (PierError, httpx.HTTPError, OSError):
            return None
        return None

    def close(self) -> None:
        self.blob.close()
        self.download.ranges_path.unlink(missing_ok=True)  # published, or holes nobody can resume


class Puller:
    def __init__(
        self,
        store: ContentStore,
        remote: Remote,
        parallel: int = 4,
        unpack: bool = True,
        limits: UnpackLimits | None = None,
    ):
        self.store = store
        self.remote = remote
        self.reference = remote.reference
        self.parallel = max(1, parallel)
        self.unpack = unpack
        self.layers = LayerStore(store.root)
        self.limits = limits
        self.keep_blobs = keep_layer_blobs()
        self.unpackers = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))
        self.range_min = range_min()
        self.workers: Unpackers | None = None  # processes for layers already on disk, during a pull

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
        layers = manifest.get("layers", [])
        if manifest["config"]["size"] > MAX_CONFIG_SIZE:
            raise PullError(f"{self.reference.familiar()}: its config is larger than {MAX_CONFIG_SIZE} bytes")
        config = manifest["config"]
        self.fetch_blob(config["digest"], config["size"], progress)
        diff_ids = self._diff_ids(digest, manifest) if self.unpack else None
        missing = [diff_id for diff_id in diff_ids or [] if not self.layers.has(diff_id)]
        if len(missing) > 1 and worker_count() > 0:
            self.workers = Unpackers(self.store.root, min(worker_count(), len(missing) - 1))
        try:
            self._fetch_all(config, layers, diff_ids, progress)
        finally:
            if self.workers is not None:
                self.workers.close()
                self.workers = None
        self.store.put(digest, body)
        if index_digest is not None and index_body is not None:
            self.store.put(index_digest, index_body)
        size = sum(d["size"] for d in [config, *layers])
        return PulledImage(self.reference, digest, index_digest, size)

    def _fetch_all(
        self, config: dict, layers: list[dict], diff_ids: list[str] | None, progress: Progress | None
    ) -> None:
        with ThreadPoolExecutor(self.parallel) as pool:
            if diff_ids is None:
                jobs = [pool.submit(self.fetch_blob, d["digest"], d["size"], progress) for d in layers]
            else:
                jobs = [
                    pool.submit(self.fetch_layer, d, diff_id, progress)
                    for d, diff_id in zip(layers, diff_ids, strict=True)
                ]
            for job in jobs:
                job.result()

    def _diff_ids(self, digest: str, manifest: dict) -> list[str] | None:
        """The layers' diff IDs from the config; None for an artifact that is no runnable image."""
        config = self.store.read(manifest["config"]["digest"])
        if manifest["config"].get("mediaType") not in IMAGE_CONFIGS:
            return None  # an artifact (a signature, an SBOM, a model): kept, not unpacked
        try:
            parsed = loads(config)
            return Image(digest, manifest, parsed if isinstance(parsed, dict) else {}).diff_ids
        except (ValueError, ImageError):
            return None  # kept as it is; ``pier run`` says what is wrong with it, if it is run

    def fetch_layer(self, descriptor: dict, diff_id: str, progress: Progress | None = None) -> None:
        """Download a layer and unpack it into its own directory: as its bytes arrive, if an unpacker is free.

        Downloads run in parallel; unpacks take one of ``unpackers`` slots (creating files
        in parallel on two cores cost more kernel time than it saved). A layer that finds
        no free slot is downloaded first and unpacked from disk when one frees.
        """
        report = progress or (lambda *args: None)
        digest, size = descriptor["digest"], descriptor["size"]
        if self.layers.has(diff_id):
            if self.keep_blobs:
                self.fetch_blob(digest, size, progress)
            else:
                report(digest, "exists", size, size)
            return
        if not self.store.has(digest) and self.unpackers.acquire(blocking=False):
            try:
                if self._stream_layer(descriptor, diff_id, report):
                    return
            finally:
                self.unpackers.release()
        if not self.store.has(digest):
            self.fetch_blob(digest, size, progress)
        report(digest, "unpacking", 0, size)
        if self.workers is not None and not self.unpackers.acquire(blocking=False):
            self.workers.unpack(diff_id, self.store.path(digest), descriptor["mediaType"], digest)
            if not self.keep_blobs:
                self.store.delete(digest)
        else:
            if self.workers is not None:
                self.unpackers.release()  # taken above to see that it was free
            with self.unpackers:
                self._unpack_stored(descriptor, diff_id)
        report(digest, "done", size, size)

    def _unpack_stored(self, descriptor: dict, diff_id: str) -> None:
        digest, media_type = descriptor["digest"], descriptor["mediaType"]
        with self.store.path(digest).open("rb") as stream:
            self.layers.unpack(diff_id, verified(stream, digest), media_type, digest, self.limits)
        if not self.keep_blobs:
            self.store.delete(digest)

    def _stream_layer(self, descriptor: dict, diff_id: str, report: Progress) -> bool:
        """Unpack the layer from its download; False when another process got the blob meanwhile,
        or when a partial download is there to resume first (with ``Range``, by ``fetch_blob``).
        """
        digest, size, media_type = descriptor["digest"], descriptor["size"], descriptor["mediaType"]
        with self.store.download(digest) as download:
            if download.already_done or download.offset:
                return False  # done by another process, or to be resumed (with Range) before unpacking
            report(digest, "downloading", download.offset, size)
            # Ranges land in a file first; without blobs kept, one stream goes straight to the unpacker.
            ranged = self.keep_blobs and size >= self.range_min
            tee: _Tee | _RangedTee = (_RangedTee if ranged else _Tee)(self, download, size, report)
            try:
                unpacked = self.layers.unpack(diff_id, tee, media_type, digest, self.limits)
            except LayerDigestMismatch as exc:
                download.abort()
                raise PullError(str(exc)) from None
            except BrokenLayer:
                mismatch = tee.mismatch()  # corrupt bytes fail to decompress before any digest is known
                if mismatch:
                    raise PullError(mismatch) from None
                raise  # the partial blob stays for the next pull to resume (network and disk errors too)
            finally:
                tee.close()
        if not unpacked and self.keep_blobs:  # unpacked by another process meanwhile: get the blob
            self.fetch_blob(digest, size)
        report(digest, "done", size, size)
        return True

    def fetch_blob(self, digest: str, size: int, progress: Progress | None = None) -> None:
        report = progress or (lambda *args: None)
        if self.store.has(digest):
            report(digest, "exists", size, size)
            return
        with self.store.download(digest) as download:
            if download.already_done:
                report(digest, "exists", size, size)
                return
            if size >= self.range_min and download.offset == 0:
                ranged = _RangedTee(self, download, size, report)
                try:
                    ranged.finish(digest)  # reads it all, in order, then verifies and publishes
                finally:
                    ranged.close()
                report(digest, "done", size, size)
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
                for chunk in response.iter_bytes(CHUNK):
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
    unpack: bool = True,
) -> PulledImage:
    """Pull ``reference`` into ``store``; ``unpack`` also unpacks its layers into the layer store."""
    transport = Transport(reference.api_host, insecure=insecure, credentials=credentials, ca_cert=ca_cert)
    try:
        with store.lock():
            puller = Puller(store, Remote(transport, reference), parallel, unpack=unpack)
            image = puller.pull(platform, progress)
            if reference.tag:
                store.set_ref(reference.name, reference.tag, image.index_digest or image.digest)
    except RegistryRequestError as exc:
        raise PullError(str(exc)) from None
    finally:
        transport.close()
    return image
