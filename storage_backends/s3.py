"""S3 backend (boto3, run off the event loop in a thread pool of its own).

Objects map one-to-one onto paths: ``<prefix><path>``. Writes are multipart uploads
that become visible only when completed, so a crash never leaves a half object; an
incomplete upload is invisible and ``purge_incomplete`` aborts it.

S3 cannot append. An appendable file (an upload session's bytes) is a small JSON
*segment list* at the path, marked by object metadata, naming whole objects stored
under the path's hidden children (``<path>/.segments/<id>``). An append writes one new
segment and then replaces the list; a segment smaller than S3's 5 MiB minimum part is
read back (at most 5 MiB) and rewritten with the next append's bytes, so that moving
the file into place is a server-side ``UploadPartCopy`` of its segments, never a
download. Appends are exclusive through a lock object created with ``If-None-Match: *``.

Every request goes through ``_Bucket`` (and ``_MultipartUpload`` for multipart
uploads): the driver and its writers share that small interface, never each other's
internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .base import (
    FileInfo,
    FileWriter,
    Opener,
    PathNotFound,
    ShortWrite,
    StorageDriver,
    StorageError,
    StorageFull,
    WriterBusy,
    check_path,
)

T = TypeVar("T")
# boto3's clients and responses are built at run time and untyped: a response is a dict of
# whatever the operation returns, hence ``Any`` for its values (and for the client itself).
Response = dict[str, Any]

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_COPY_PART = 4 * 1024**3  # pieces of a server-side copy; S3 allows up to 5 GiB
MAX_SINGLE_COPY = 5 * 1024**3  # CopyObject's limit
READ_CHUNK = 1024 * 1024
LOCK_LEASE = 15 * 60.0  # an append lock older than this was left by a dead writer
APPEND_MARK = "pier-appendable"  # metadata of a segment list (boto3 lower-cases the names)
SIZE_MARK = "pier-size"
ADDRESSING_STYLES = ("auto", "path", "virtual")

_MISSING = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _refusal(message: str, exc: ClientError) -> StorageError:
    """A refusal as the registry should see it: a full store (HTTP 507, MinIO's
    XMinioStorageFull) is ``StorageFull``, anything else a ``StorageError``."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status == 507 or _code(exc) == "XMinioStorageFull":
        return StorageFull(f"{message}: {exc}")
    return StorageError(f"{message}: {exc}")


def _segment_key(key: str, segment_id: str) -> str:
    return f"{key}/.segments/{segment_id}"


def _lock_key(key: str) -> str:
    return f"{key}/.lock"


class _PreconditionFailed(StorageError):
    """A conditional PUT (``If-Match``, ``If-None-Match``) found the object not as expected."""


class _Segments:
    """The parsed segment list of an appendable file."""

    def __init__(self, body: bytes | None = None) -> None:
        data = json.loads(body) if body else {}
        self.items: list[dict[str, Any]] = list(data.get("segments", []))

    @property
    def size(self) -> int:
        return sum(int(item["size"]) for item in self.items)

    def encode(self) -> bytes:
        return json.dumps({"size": self.size, "segments": self.items}).encode()


class _Bucket:
    """Every request the backend makes, on one bucket: the driver's and its writers'.

    boto3 blocks, so requests run in a thread pool of their own. S3's refusals become
    ``StorageError`` (``StorageFull`` for a full store); a missing key is ``None``.
    """

    def __init__(self, client: Any, name: str, max_connections: int) -> None:
        self.client = client  # a boto3 S3 client (untyped)
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="pier-s3")

    async def run(self, function: Callable[..., T], /, **kwargs: Any) -> T:
        """Run a blocking call in the pool; S3's refusals (``ClientError``) are left to the caller."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, partial(function, **kwargs))
        except BotoCoreError as exc:
            raise StorageError(f"S3: {exc}") from None

    async def _request(self, operation: str, /, **kwargs: Any) -> Response:
        response: Response = await self.run(getattr(self.client, operation), Bucket=self.name, **kwargs)
        return response

    async def call(self, operation: str, /, **kwargs: Any) -> Response:
        """One S3 operation (boto3's name for it) on this bucket."""
        try:
            return await self._request(operation, **kwargs)
        except ClientError as exc:
            raise _refusal(f"S3 refused {operation}", exc) from None

    async def head(self, key: str) -> Response | None:
        try:
            return await self._request("head_object", Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise StorageError(f"S3 HEAD {key}: {exc}") from None

    async def get(self, key: str, range_: str | None = None) -> Response | None:
        """The object's response, its ``Body`` still to be read (``None`` past its end)."""
        kwargs: dict[str, Any] = {"Key": key}
        if range_:
            kwargs["Range"] = range_
        try:
            return await self._request("get_object", **kwargs)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            if _code(exc) == "InvalidRange":
                return {"Body": None, "Metadata": {}}
            raise StorageError(f"S3 GET {key}: {exc}") from None

    def _get_whole(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        try:
            response = self.client.get_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise StorageError(f"S3 GET {key}: {exc}") from None
        with contextlib.closing(response["Body"]) as body:
            return cast(bytes, body.read()), cast(dict[str, str], response["Metadata"])

    async def get_whole(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """A small object's bytes and metadata in one trip to the pool: links and tags are tiny."""
        return await self.run(self._get_whole, key=key)

    async def read_body(self, response: Response) -> AsyncIterator[bytes]:
        body = response["Body"]
        if body is None:
            return
        try:
            while True:
                chunk: bytes = await self.run(body.read, amt=READ_CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    async def read_all(self, key: str) -> tuple[bytes, Response] | None:
        """An object's bytes with its response (metadata, ETag), or None when it is missing."""
        response = await self.get(key)
        if response is None:
            return None
        return b"".join([chunk async for chunk in self.read_body(response)]), response

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: dict[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> Response:
        """Write a whole object; ``_PreconditionFailed`` when a condition does not hold."""
        kwargs: dict[str, Any] = {}
        if metadata is not None:
            kwargs["Metadata"] = metadata
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            return await self._request("put_object", Key=key, Body=data, **kwargs)
        except ClientError as exc:
            if _code(exc) in _PRECONDITION:
                raise _PreconditionFailed(f"S3 PUT {key}: {exc}") from None
            raise _refusal(f"S3 PUT {key}", exc) from None

    async def copy(self, source: str, dest: str) -> None:
        await self.call("copy_object", Key=dest, CopySource={"Bucket": self.name, "Key": source})

    async def keys_under(self, prefix: str) -> AsyncIterator[list[Response]]:
        """The objects below ``prefix``, a listing page (up to 1,000, sorted by key) at a time."""
        kwargs: dict[str, Any] = {"Prefix": prefix}
        while True:
            page = await self.call("list_objects_v2", **kwargs)
            if page.get("Contents"):
                yield page["Contents"]
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete objects, 1,000 per request; missing ones are not an error."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            answer = await self.call("delete_objects", Delete={"Objects": batch, "Quiet": True})
            errors = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING]
            if errors:
                raise StorageError(f"S3 delete failed for {errors[0].get('Key')}: {errors[0].get('Message')}")

    async def start_multipart(self, key: str) -> _MultipartUpload:
        answer = await self.call("create_multipart_upload", Key=key)
        return _MultipartUpload(self, key, str(answer["UploadId"]))

    async def presigned_get(self, key: str, expires: float) -> str:
        url: str = await self.run(
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={"Bucket": self.name, "Key": key},
            ExpiresIn=int(expires),
        )
        return url

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _MultipartUpload:
    """One multipart upload: parts sent or copied server-side, then completed or aborted.

    Nothing is visible at ``key`` until ``complete``; an upload never completed is
    invisible, and aborted by ``abort`` or, after a crash, by ``purge_incomplete``.
    """

    def __init__(self, bucket: _Bucket, key: str, upload_id: str) -> None:
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id

    async def send_part(self, number: int, data: bytes) -> Response:
        """Upload part ``number``; the answer is the part as ``complete`` wants it."""
        answer = await self.bucket.call(
            "upload_part", Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def copy_part(self, number: int, source: str, first: int, last: int) -> Response:
        """Part ``number`` is bytes ``first``..``last`` of the object ``source``, copied on the server."""
        answer = await self.bucket.call(
            "upload_part_copy",
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket.name, "Key": source},
            CopySourceRange=f"bytes={first}-{last}",
        )
        return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

    async def complete(self, parts: list[Response]) -> None:
        await self.bucket.call(
            "complete_multipart_upload",
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )

    async def abort(self) -> None:
        with contextlib.suppress(StorageError):  # else purge_incomplete will find it
            await self.bucket.call("abort_multipart_upload", Key=self.key, UploadId=self.upload_id)


class S3Driver(StorageDriver):
    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        part_size: int = 8 * 1024 * 1024,
        parallel_parts: int = 4,
        max_connections: int = 32,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"S3 part size must be at least 5 MiB, not {part_size}")
        if addressing_style not in ADDRESSING_STYLES:
            raise ValueError(f"s3_addressing_style must be auto, path or virtual, not {addressing_style!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        style = cast(Literal["auto", "path", "virtual"], addressing_style)  # checked just above
        config = Config(
            s3={"addressing_style": style},
            signature_version="s3v4",
            max_pool_connections=max_connections,
            retries={"mode": "standard", "max_attempts": 4},
        )
        # boto3's standard chain: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws, instance roles...
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )
        self._s3 = _Bucket(client, bucket, max_connections)

    def check_bucket(self, wait: float = 0.0) -> None:
        """Fail at start, in one line, when the bucket is missing or the credentials are wrong.

        S3 that is not answering yet, or a bucket not there yet, is waited for up to ``wait``
        seconds: a registry often starts beside its store (compose, a pod, a quickstart).
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                self._s3.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                code = _code(exc)
                missing = code in _MISSING | {"NoSuchBucket"}
                if missing and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                reason = "does not exist" if missing else f"is not usable ({code})"
                raise ValueError(f"S3 bucket {self.bucket!r} {reason}") from None
            except BotoCoreError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise ValueError(f"S3 is not reachable: {exc}") from None

    # -- plumbing ------------------------------------------------------------------
    def key(self, path: str) -> str:
        return self.prefix + check_path(path)

    def _dir_prefix(self, path: str) -> str:
        return self.key(path) + "/" if path else self.prefix

    async def _segments(self, key: str) -> tuple[_Segments, str] | None:
        """The segment list at ``key`` and its ETag, or None when the object is plain."""
        response = await self._s3.get(key)
        if response is None:
            return None
        if response["Metadata"].get(APPEND_MARK) != "1":
            response["Body"].close()
            return None
        body = b"".join([chunk async for chunk in self._s3.read_body(response)])
        return _Segments(body), str(response["ETag"])

    # -- small files ---------------------------------------------------------------
    async def get_content(self, path: str) -> bytes:
        found = await self._s3.get_whole(self.key(path))
        if found is None:
            raise PathNotFound(path)
        if found[1].get(APPEND_MARK) == "1":
            return b"".join([chunk async for chunk in self.reader(path)])
        return found[0]

    async def put_content(self, path: str, data: bytes) -> None:
        await self._s3.put(self.key(path), data)

    # -- streams -------------------------------------------------------------------
    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        key = self.key(path)
        if length == 0:
            if await self._s3.head(key) is None:
                raise PathNotFound(path)
            return
        range_ = None
        if offset or length is not None:
            range_ = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        response = await self._s3.get(key, range_)
        if response is None:
            raise PathNotFound(path)
        if response["Body"] is None:  # a range past the end: of the object, or of a segment list?
            head = await self._s3.head(key)
            response["Metadata"] = {} if head is None else head["Metadata"]
        if response["Metadata"].get(APPEND_MARK) == "1":
            if response["Body"] is not None:
                response["Body"].close()
            async for chunk in self._read_segments(path, key, offset, length):
                yield chunk
            return
        async for chunk in self._s3.read_body(response):
            yield chunk

    async def _read_segments(
        self, path: str, key: str, offset: int, length: int | None
    ) -> AsyncIterator[bytes]:
        found = await self._segments(key)
        if found is None:
            raise PathNotFound(path)
        end = found[0].size if length is None else min(found[0].size, offset + length)
        position = 0
        for item in found[0].items:
            start, stop = max(offset, position), min(end, position + item["size"])
            if start < stop:
                range_ = f"bytes={start - position}-{stop - position - 1}"
                response = await self._s3.get(_segment_key(key, item["id"]), range_)
                if response is None:
                    raise StorageError(f"segment {item['id']} of {path} is missing")
                async for chunk in self._s3.read_body(response):
                    yield chunk
            position += item["size"]

    async def writer(self, path: str, append: bool = False, size: int | None = None) -> FileWriter:
        key = self.key(path)
        if not append:
            return _ObjectWriter(self._s3, key, self.part_size, self.parallel_parts, declared=size)
        return await _AppendWriter.open(self._s3, path, key, self.part_size, self.parallel_parts)

    # -- metadata ------------------------------------------------------------------
    async def stat(self, path: str) -> FileInfo:
        head = await self._s3.head(self.key(path))
        if head is not None:
            size = int(head["ContentLength"])
            if head["Metadata"].get(APPEND_MARK) == "1":
                size = int(head["Metadata"].get(SIZE_MARK, "0"))
            return FileInfo(path, size, head["LastModified"].timestamp(), False)
        listing = await self._s3.call("list_objects_v2", Prefix=self._dir_prefix(path), MaxKeys=1)
        if listing.get("KeyCount", 0):
            return FileInfo(path, 0, listing["Contents"][0]["LastModified"].timestamp(), True)
        raise PathNotFound(path)

    async def list_children(self, path: str) -> list[str]:
        prefix = self._dir_prefix(path)
        names: set[str] = set()
        kwargs: dict[str, Any] = {"Prefix": prefix, "Delimiter": "/"}
        while True:
            page = await self._s3.call("list_objects_v2", **kwargs)
            names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        return sorted(n for n in names if n and not n.startswith("."))

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        """One flat listing instead of a list and a HEAD per file: 1,000 files per request.

        An appendable file's listed size is its segment list's; its real size needs a HEAD.
        Its segments (``<key>/.segments/...``) sort right after it, so a file is held back
        until the listing has passed every key that could be its child.
        """
        prefix = self._dir_prefix(path)
        held: dict[str, FileInfo] = {}
        appendable: set[str] = set()

        async def release(last_key: str | None) -> AsyncIterator[FileInfo]:
            for key in list(held):
                if last_key is not None and last_key < key + "0":  # "0" sorts right after "/"
                    continue
                info = held.pop(key)
                if key in appendable:
                    try:
                        info = await self.stat(info.path)
                    except PathNotFound:
                        continue  # moved or deleted meanwhile
                yield info

        async for page in self._s3.keys_under(prefix):
            for item in page:
                key: str = item["Key"]
                relative = key[len(self.prefix) :]
                parts = relative.split("/")
                hidden = [i for i, part in enumerate(parts) if part.startswith(".")]
                if hidden:
                    if parts[hidden[0]] == ".segments":
                        appendable.add(self.prefix + "/".join(parts[: hidden[0]]))
                    continue
                if key.endswith("/") or not all(parts):
                    continue  # a folder marker some S3 servers list
                held[key] = FileInfo(relative, item["Size"], item["LastModified"].timestamp(), False)
            async for info in release(page[-1]["Key"]):
                yield info
        async for info in release(None):
            yield info

    async def move(self, source: str, dest: str) -> None:
        src, dst = self.key(source), self.key(dest)
        head = await self._s3.head(src)
        if head is None:
            raise PathNotFound(source)
        if head["Metadata"].get(APPEND_MARK) == "1":
            found = await self._segments(src)
            if found is None:
                raise PathNotFound(source)
            pieces = [(_segment_key(src, item["id"]), int(item["size"])) for item in found[0].items]
        else:
            pieces = [(src, int(head["ContentLength"]))]
        await self._copy(pieces, dst)
        await self.delete(source)

    async def _copy(self, pieces: list[tuple[str, int]], dst: str) -> None:
        """Concatenate whole objects into ``dst`` on the server: CopyObject or UploadPartCopy."""
        pieces = [(key, size) for key, size in pieces if size]
        if not pieces:
            await self._s3.put(dst, b"")
            return
        if len(pieces) == 1 and pieces[0][1] <= MAX_SINGLE_COPY:
            await self._s3.copy(pieces[0][0], dst)
            return
        ranges = []
        for key, size in pieces:
            count = -(-size // MAX_COPY_PART)
            step = -(-size // count)
            ranges += [(key, start, min(size, start + step) - 1) for start in range(0, size, step)]
        upload = await self._s3.start_multipart(dst)
        try:
            parts: list[Response] = []
            for batch in range(0, len(ranges), self.parallel_parts):
                chunk = ranges[batch : batch + self.parallel_parts]
                parts += await asyncio.gather(
                    *(upload.copy_part(batch + i + 1, *spec) for i, spec in enumerate(chunk))
                )
            await upload.complete(parts)
        except BaseException:
            await upload.abort()
            raise

    async def delete(self, path: str) -> None:
        key = self.key(path)
        doomed = []
        async for page in self._s3.keys_under(key + "/"):
            doomed += [item["Key"] for item in page]
        # Deepest first, the path itself last: stores with real folders (SeaweedFS) then drop
        # the emptied folders too, as the filesystem backend does.
        await self._s3.delete_keys([*sorted(doomed, key=lambda k: -k.count("/")), key])

    async def delete_files(self, paths: list[str]) -> None:
        # Each file's folder key after it: S3 has none (a no-op), SeaweedFS drops the folder
        # if it is empty and keeps it otherwise, so no folder outlives its last file.
        keys = [key for path in paths for key in (self.key(path), self.key(path).rsplit("/", 1)[0])]
        await self._s3.delete_keys([key for key in keys if key != self.prefix.rstrip("/")])

    # -- extras --------------------------------------------------------------------
    async def url_for(self, path: str, expires: float) -> str | None:
        return await self._s3.presigned_get(self.key(path), expires)

    async def purge_incomplete(self, older_than: float) -> int:
        """Abort multipart uploads started before ``older_than`` (a crashed writer's leftovers)."""
        aborted = 0
        kwargs: dict[str, Any] = {"Prefix": self.prefix}
        while True:
            page = await self._s3.call("list_multipart_uploads", **kwargs)
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < older_than:
                    await _MultipartUpload(self._s3, upload["Key"], upload["UploadId"]).abort()
                    aborted += 1
            if not page.get("IsTruncated"):
                break
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")
        return aborted

    async def close(self) -> None:
        self._s3.close()


def open_location(location: str, /, *, fsync: bool = True, wait: float = 0.0, **options: Any) -> S3Driver:
    """The ``s3`` backend's ``Opener``: ``location`` is ``BUCKET`` or ``BUCKET/PREFIX``.

    ``options`` go to ``S3Driver`` (endpoint_url, region, addressing_style, part_size);
    ``fsync`` means nothing here: a completed object is durable. The bucket is checked
    now, waiting up to ``wait`` seconds for it.
    """
    bucket, _, prefix = location.partition("/")
    if not bucket:
        raise ValueError(f"no bucket in 's3://{location}': use s3://BUCKET or s3://BUCKET/PREFIX")
    driver = S3Driver(bucket, prefix, **options)
    driver.check_bucket(wait)
    return driver


_OPENER: Opener = open_location  # mypy checks it against the contract


class _ObjectWriter(FileWriter):
    """A new object: one PUT when small, else a multipart upload with parts in flight.

    The object is completed only when the parts S3 acknowledged add up to every byte
    written, and to the declared size if there is one; else the upload is aborted.
    """

    def __init__(
        self,
        bucket: _Bucket,
        key: str,
        part_size: int,
        parallel_parts: int,
        start: bytes = b"",
        declared: int | None = None,
    ) -> None:
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._declared = declared
        self._buffer = bytearray(start)
        self._size = len(start)
        self._upload: _MultipartUpload | None = None
        self._parts: list[asyncio.Task[tuple[Response, int]]] = []  # each part with its size
        self._slots = asyncio.Semaphore(parallel_parts)
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to a closed writer")
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= self._part_size:
            part = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            await self._send(part)

    async def _send(self, part: bytes) -> None:
        if self._upload is None:
            self._upload = await self._bucket.start_multipart(self._key)
        upload = self._upload
        for task in [t for t in self._parts if t.done()]:
            task.result()  # a failed part fails the write now, not at commit
        await self._slots.acquire()
        number = len(self._parts) + 1

        async def send() -> tuple[Response, int]:
            try:
                return await upload.send_part(number, part), len(part)
            finally:
                self._slots.release()

        self._parts.append(asyncio.ensure_future(send()))

    async def sync(self) -> None:
        """Nothing is durable before ``commit`` on S3; ``commit`` is the one step."""

    async def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._declared is not None and self._declared != self._size:
                raise ShortWrite(f"{self._key}: {self._size} bytes written, {self._declared} declared")
            if self._upload is None:
                await self._bucket.put(self._key, bytes(self._buffer))
                return
            if self._buffer or not self._parts:
                await self._send(bytes(self._buffer))
            sent = await asyncio.gather(*self._parts)
            stored = sum(size for _, size in sent)
            if stored != self._size:
                raise ShortWrite(f"{self._key}: parts hold {stored} bytes, {self._size} written")
            await self._upload.complete([part for part, _ in sent])
        except BaseException:
            await self._discard()
            raise
        finally:
            self._buffer = bytearray()

    async def _discard(self) -> None:
        for task in self._parts:
            task.cancel()
        await asyncio.gather(*self._parts, return_exceptions=True)
        if self._upload is not None:
            await self._upload.abort()

    async def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._buffer = bytearray()
            await self._discard()


class _AppendWriter(FileWriter):
    """Continues an appendable file: new bytes go to a new segment, then the list is replaced."""

    def __init__(self, bucket: _Bucket, path: str, key: str, part_size: int, parallel_parts: int) -> None:
        self._bucket = bucket
        self._path = path
        self._key = key
        self._lock_key = _lock_key(key)
        self._part_size = part_size
        self._parallel_parts = parallel_parts
        self._segments = _Segments()
        self._original: tuple[bytes, dict[str, str]] = (b"", {})  # as found: restored by cancel
        self._etag: str | None = None
        self._start = 0
        self._size = 0
        self._segment: _ObjectWriter | None = None
        self._pending_id = ""  # the id of ``_segment``
        self._replaced: list[str] = []  # segments superseded by a rewritten tail
        self._created: list[str] = []
        self._closed = False
        self._published = False  # the list at the path was replaced by this writer
        self._committed: list[dict[str, Any]] = []  # segments of the list as found

    @classmethod
    async def open(
        cls, bucket: _Bucket, path: str, key: str, part_size: int, parallel_parts: int
    ) -> _AppendWriter:
        writer = cls(bucket, path, key, part_size, parallel_parts)
        await writer._lock()
        try:
            await writer._load()
        except BaseException:
            await writer._unlock()
            raise
        return writer

    async def _lock(self) -> None:
        for _ in range(2):
            try:
                await self._bucket.put(self._lock_key, str(time.time()).encode(), if_none_match=True)
                return
            except _PreconditionFailed:
                head = await self._bucket.head(self._lock_key)
                if head is not None and time.time() - head["LastModified"].timestamp() < LOCK_LEASE:
                    raise WriterBusy(self._path) from None
                await self._bucket.delete_keys([self._lock_key])  # a dead writer's lock
        raise WriterBusy(self._path)

    async def _unlock(self) -> None:
        await self._bucket.delete_keys([self._lock_key])

    async def _load(self) -> None:
        found = await self._bucket.read_all(self._key)
        if found is None:
            raise PathNotFound(self._path)
        body, response = found
        self._etag = response["ETag"]
        self._original = (body, response["Metadata"])
        if response["Metadata"].get(APPEND_MARK) == "1":
            self._segments = _Segments(body)
        elif body:  # a plain file becomes the first segment
            first = uuid.uuid4().hex
            await self._bucket.put(_segment_key(self._key, first), body)
            self._created.append(first)
            self._segments.items.append({"id": first, "size": len(body)})
        self._start = self._size = self._segments.size
        self._committed = list(self._segments.items)

    @property
    def size(self) -> int:
        return self._size

    async def _open_segment(self) -> _ObjectWriter:
        """A new segment; it starts with the last one's bytes when that is below 5 MiB."""
        head = b""
        items = self._segments.items
        if items and items[-1]["size"] < MIN_PART:
            tail = items.pop()
            found = await self._bucket.read_all(_segment_key(self._key, tail["id"]))
            if found is None:
                raise StorageError(f"segment {tail['id']} of {self._path} is missing")
            head = found[0]
            self._replaced.append(tail["id"])
        segment_id = uuid.uuid4().hex
        self._created.append(segment_id)
        self._pending_id = segment_id
        key = _segment_key(self._key, segment_id)
        return _ObjectWriter(self._bucket, key, self._part_size, self._parallel_parts, head)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to a closed writer")
        if not data:
            return
        if self._segment is None:
            self._segment = await self._open_segment()
        await self._segment.write(data)
        self._size += len(data)

    async def sync(self) -> None:
        """Commit the new segment and the list, keeping the lock: readers now see the bytes."""
        if self._closed or self._segment is None:
            return
        segment, self._segment = self._segment, None
        await segment.commit()
        self._segments.items.append({"id": self._pending_id, "size": segment.size})
        await self._publish()

    async def _publish(self) -> None:
        metadata = {APPEND_MARK: "1", SIZE_MARK: str(self._segments.size)}
        try:
            answer = await self._bucket.put(
                self._key, self._segments.encode(), metadata=metadata, if_match=self._etag or None
            )
        except _PreconditionFailed:
            raise StorageError(f"{self._path} changed under an exclusive append") from None
        self._etag = answer["ETag"]
        self._published = True

    async def commit(self) -> None:
        if self._closed:
            return
        try:
            await self.sync()
        except BaseException:
            await self.cancel()
            raise
        self._closed = True
        try:
            if self._replaced:
                await self._bucket.delete_keys([_segment_key(self._key, i) for i in self._replaced])
        finally:
            await self._unlock()

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._segment is not None:
                await self._segment.cancel()
            body, metadata = self._original
            if self._published:
                try:
                    await self._bucket.put(self._key, body, metadata=metadata, if_match=self._etag)
                except _PreconditionFailed:
                    raise StorageError(f"{self._path} changed under an exclusive append") from None
            committed = {item["id"] for item in self._committed}
            await self._bucket.delete_keys(
                [_segment_key(self._key, i) for i in self._created if i not in committed]
            )
        finally:
            await self._unlock()
