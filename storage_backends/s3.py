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
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .base import (
    FileInfo,
    FileWriter,
    PathNotFound,
    ShortWrite,
    StorageDriver,
    StorageError,
    StorageFull,
    WriterBusy,
    check_path,
)

T = TypeVar("T")

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_COPY_PART = 4 * 1024**3  # pieces of a server-side copy; S3 allows up to 5 GiB
MAX_SINGLE_COPY = 5 * 1024**3  # CopyObject's limit
READ_CHUNK = 1024 * 1024
LOCK_LEASE = 15 * 60.0  # an append lock older than this was left by a dead writer
APPEND_MARK = "pier-appendable"  # metadata of a segment list (boto3 lower-cases the names)
SIZE_MARK = "pier-size"

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


class _Segments:
    """The parsed segment list of an appendable file."""

    def __init__(self, body: bytes | None = None) -> None:
        data = json.loads(body) if body else {}
        self.items: list[dict[str, Any]] = list(data.get("segments", []))

    @property
    def size(self) -> int:
        return sum(item["size"] for item in self.items)

    def encode(self) -> bytes:
        return json.dumps({"size": self.size, "segments": self.items}).encode()


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
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        config = Config(
            s3={"addressing_style": addressing_style},
            signature_version="s3v4",
            max_pool_connections=max_connections,
            retries={"mode": "standard", "max_attempts": 4},
        )
        # boto3's standard chain: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws, instance roles...
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )
        self._pool = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="pier-s3")

    def check_bucket(self, wait: float = 0.0) -> None:
        """Fail at start, in one line, when the bucket is missing or the credentials are wrong.

        S3 that is not answering yet, or a bucket not there yet, is waited for up to ``wait``
        seconds: a registry often starts beside its store (compose, a pod, a quickstart).
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                self.client.head_bucket(Bucket=self.bucket)
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

    async def _call(self, function: Callable[..., T], /, raw: bool = False, **kwargs: Any) -> T:
        """Run one boto3 call in the pool. S3's refusals become ``StorageError`` unless ``raw``:
        callers that tell one refusal from another (missing key, failed precondition) ask for it."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, partial(function, **kwargs))
        except BotoCoreError as exc:
            raise StorageError(f"S3: {exc}") from None
        except ClientError as exc:
            if raw:
                raise
            raise _refusal(f"S3 refused {getattr(function, '__name__', 'a call')}", exc) from None

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return await self._call(self.client.head_object, raw=True, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise StorageError(f"S3 HEAD {key}: {exc}") from None

    async def _get(self, key: str, range_: str | None = None) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if range_:
            kwargs["Range"] = range_
        try:
            return await self._call(self.client.get_object, raw=True, **kwargs)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            if _code(exc) == "InvalidRange":
                return {"Body": None, "Metadata": {}}
            raise StorageError(f"S3 GET {key}: {exc}") from None

    async def _put(self, key: str, data: bytes, **kwargs: Any) -> dict[str, Any]:
        try:
            return await self._call(
                self.client.put_object, raw=True, Bucket=self.bucket, Key=key, Body=data, **kwargs
            )
        except ClientError as exc:
            if _code(exc) in _PRECONDITION:
                raise
            raise _refusal(f"S3 PUT {key}", exc) from None

    async def _read_body(self, response: dict[str, Any]) -> AsyncIterator[bytes]:
        body = response["Body"]
        if body is None:
            return
        try:
            while True:
                chunk = await self._call(body.read, amt=READ_CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    async def _segments(self, key: str) -> tuple[_Segments, str] | None:
        """The segment list at ``key`` and its ETag, or None when the object is plain."""
        response = await self._get(key)
        if response is None:
            return None
        if response["Metadata"].get(APPEND_MARK) != "1":
            response["Body"].close()
            return None
        body = b"".join([chunk async for chunk in self._read_body(response)])
        return _Segments(body), response["ETag"]

    # -- small files ---------------------------------------------------------------
    def _get_whole(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise StorageError(f"S3 GET {key}: {exc}") from None
        with contextlib.closing(response["Body"]) as body:
            return body.read(), response["Metadata"]

    async def get_content(self, path: str) -> bytes:
        # One trip to the thread pool for the request and the body: links and tags are tiny.
        found = await self._call(self._get_whole, key=self.key(path))
        if found is None:
            raise PathNotFound(path)
        if found[1].get(APPEND_MARK) == "1":
            return b"".join([chunk async for chunk in self.reader(path)])
        return found[0]

    async def put_content(self, path: str, data: bytes) -> None:
        await self._put(self.key(path), data)

    # -- streams -------------------------------------------------------------------
    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        key = self.key(path)
        if length == 0:
            if await self._head(key) is None:
                raise PathNotFound(path)
            return
        range_ = None
        if offset or length is not None:
            range_ = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        response = await self._get(key, range_)
        if response is None:
            raise PathNotFound(path)
        if response["Body"] is None:  # a range past the end: of the object, or of a segment list?
            head = await self._head(key)
            response["Metadata"] = {} if head is None else head["Metadata"]
        if response["Metadata"].get(APPEND_MARK) == "1":
            if response["Body"] is not None:
                response["Body"].close()
            async for chunk in self._read_segments(path, key, offset, length):
                yield chunk
            return
        async for chunk in self._read_body(response):
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
                response = await self._get(f"{key}/.segments/{item['id']}", range_)
                if response is None:
                    raise StorageError(f"segment {item['id']} of {path} is missing")
                async for chunk in self._read_body(response):
                    yield chunk
            position += item["size"]

    async def writer(self, path: str, append: bool = False, size: int | None = None) -> FileWriter:
        key = self.key(path)
        if not append:
            return _ObjectWriter(self, key, declared=size)
        return await _AppendWriter.open(self, path, key)

    # -- metadata ------------------------------------------------------------------
    async def stat(self, path: str) -> FileInfo:
        head = await self._head(self.key(path))
        if head is not None:
            size = head["ContentLength"]
            if head["Metadata"].get(APPEND_MARK) == "1":
                size = int(head["Metadata"].get(SIZE_MARK, "0"))
            return FileInfo(path, size, head["LastModified"].timestamp(), False)
        listing = await self._call(
            self.client.list_objects_v2, Bucket=self.bucket, Prefix=self._dir_prefix(path), MaxKeys=1
        )
        if listing.get("KeyCount", 0):
            return FileInfo(path, 0, listing["Contents"][0]["LastModified"].timestamp(), True)
        raise PathNotFound(path)

    async def list(self, path: str) -> list[str]:
        prefix = self._dir_prefix(path)
        names: set[str] = set()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
        while True:
            page = await self._call(self.client.list_objects_v2, **kwargs)
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

        async for page in self._keys_under(prefix):
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

    async def _keys_under(self, prefix: str) -> AsyncIterator[list[dict[str, Any]]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = await self._call(self.client.list_objects_v2, **kwargs)
            if page.get("Contents"):
                yield page["Contents"]
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def move(self, source: str, dest: str) -> None:
        src, dst = self.key(source), self.key(dest)
        head = await self._head(src)
        if head is None:
            raise PathNotFound(source)
        if head["Metadata"].get(APPEND_MARK) == "1":
            found = await self._segments(src)
            if found is None:
                raise PathNotFound(source)
            pieces = [(f"{src}/.segments/{item['id']}", item["size"]) for item in found[0].items]
        else:
            pieces = [(src, head["ContentLength"])]
        await self._copy(pieces, dst)
        await self.delete(source)

    async def _copy(self, pieces: list[tuple[str, int]], dst: str) -> None:
        """Concatenate whole objects into ``dst`` on the server: CopyObject or UploadPartCopy."""
        pieces = [(key, size) for key, size in pieces if size]
        if not pieces:
            await self._put(dst, b"")
            return
        if len(pieces) == 1 and pieces[0][1] <= MAX_SINGLE_COPY:
            source = {"Bucket": self.bucket, "Key": pieces[0][0]}
            await self._call(self.client.copy_object, Bucket=self.bucket, Key=dst, CopySource=source)
            return
        upload = await self._call(self.client.create_multipart_upload, Bucket=self.bucket, Key=dst)
        upload_id = upload["UploadId"]
        try:
            ranges = []
            for key, size in pieces:
                count = -(-size // MAX_COPY_PART)
                step = -(-size // count)
                ranges += [(key, start, min(size, start + step) - 1) for start in range(0, size, step)]

            async def copy_part(number: int, key: str, first: int, last: int) -> dict[str, Any]:
                answer = await self._call(
                    self.client.upload_part_copy,
                    Bucket=self.bucket,
                    Key=dst,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": key},
                    CopySourceRange=f"bytes={first}-{last}",
                )
                return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

            parts = []
            for batch in range(0, len(ranges), self.parallel_parts):
                chunk = ranges[batch : batch + self.parallel_parts]
                parts += await asyncio.gather(
                    *(copy_part(batch + i + 1, *spec) for i, spec in enumerate(chunk))
                )
            await self._call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=dst,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            await self._abort(dst, upload_id)
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ClientError, StorageError):  # else purge_incomplete will find it
            await self._call(
                self.client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    async def delete(self, path: str) -> None:
        key = self.key(path)
        doomed = []
        async for page in self._keys_under(key + "/"):
            doomed += [item["Key"] for item in page]
        # Deepest first, the path itself last: stores with real folders (SeaweedFS) then drop
        # the emptied folders too, as the filesystem backend does.
        await self._delete_keys([*sorted(doomed, key=lambda k: -k.count("/")), key])

    async def delete_files(self, paths: list[str]) -> None:
        # Each file's folder key after it: S3 has none (a no-op), SeaweedFS drops the folder
        # if it is empty and keeps it otherwise, so no folder outlives its last file.
        keys = [key for path in paths for key in (self.key(path), self.key(path).rsplit("/", 1)[0])]
        await self._delete_keys([key for key in keys if key != self.prefix.rstrip("/")])

    async def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            answer = await self._call(
                self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            errors = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING]
            if errors:
                raise StorageError(f"S3 delete failed for {errors[0].get('Key')}: {errors[0].get('Message')}")

    # -- extras --------------------------------------------------------------------
    async def url_for(self, path: str, expires: float) -> str | None:
        return await self._call(
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={"Bucket": self.bucket, "Key": self.key(path)},
            ExpiresIn=int(expires),
        )

    async def purge_incomplete(self, older_than: float) -> int:
        """Abort multipart uploads started before ``older_than`` (a crashed writer's leftovers)."""
        aborted = 0
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = await self._call(self.client.list_multipart_uploads, **kwargs)
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < older_than:
                    await self._abort(upload["Key"], upload["UploadId"])
                    aborted += 1
            if not page.get("IsTruncated"):
                break
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")
        return aborted

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _ObjectWriter(FileWriter):
    """A new object: one PUT when small, else a multipart upload with parts in flight.

    The object is completed only when the parts S3 acknowledged add up to every byte
    written, and to the declared size if there is one; else the upload is aborted.
    """

    def __init__(self, driver: S3Driver, key: str, start: bytes = b"", declared: int | None = None) -> None:
        self._driver = driver
        self._key = key
        self._declared = declared
        self._buffer = bytearray(start)
        self._size = len(start)
        self._upload_id: str | None = None
        self._parts: list[asyncio.Task[dict[str, Any]]] = []
        self._slots = asyncio.Semaphore(driver.parallel_parts)
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to a closed writer")
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= self._driver.part_size:
            part = bytes(self._buffer[: self._driver.part_size])
            del self._buffer[: self._driver.part_size]
            await self._send(part)

    async def _send(self, part: bytes) -> None:
        driver = self._driver
        if self._upload_id is None:
            answer = await driver._call(
                driver.client.create_multipart_upload, Bucket=driver.bucket, Key=self._key
            )
            self._upload_id = answer["UploadId"]
        for task in [t for t in self._parts if t.done()]:
            task.result()  # a failed part fails the write now, not at commit
        await self._slots.acquire()
        number = len(self._parts) + 1

        async def upload() -> dict[str, Any]:
            try:
                answer = await driver._call(
                    driver.client.upload_part,
                    Bucket=driver.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=part,
                )
                return {"PartNumber": number, "ETag": answer["ETag"], "Size": len(part)}
            finally:
                self._slots.release()

        self._parts.append(asyncio.ensure_future(upload()))

    async def sync(self) -> None:
        """Nothing is durable before ``commit`` on S3; ``commit`` is the one step."""

    async def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        driver = self._driver
        try:
            if self._declared is not None and self._declared != self._size:
                raise ShortWrite(f"{self._key}: {self._size} bytes written, {self._declared} declared")
            if self._upload_id is None:
                await driver._put(self._key, bytes(self._buffer))
                return
            if self._buffer or not self._parts:
                await self._send(bytes(self._buffer))
            parts = await asyncio.gather(*self._parts)
            stored = sum(part.pop("Size") for part in parts)
            if stored != self._size:
                raise ShortWrite(f"{self._key}: parts hold {stored} bytes, {self._size} written")
            await driver._call(
                driver.client.complete_multipart_upload,
                Bucket=driver.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": list(parts)},
            )
        except BaseException:
            await self._discard()
            raise
        finally:
            self._buffer = bytearray()

    async def _discard(self) -> None:
        for task in self._parts:
            task.cancel()
        await asyncio.gather(*self._parts, return_exceptions=True)
        if self._upload_id is not None:
            await self._driver._abort(self._key, self._upload_id)

    async def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._buffer = bytearray()
            await self._discard()


class _AppendWriter(FileWriter):
    """Continues an appendable file: new bytes go to a new segment, then the list is replaced."""

    def __init__(self, driver: S3Driver, path: str, key: str) -> None:
        self._driver = driver
        self._path = path
        self._key = key
        self._lock_key = f"{key}/.lock"
        self._segments = _Segments()
        self._original: tuple[bytes, dict[str, str]] = (b"", {})  # as found: restored by cancel
        self._etag: str | None = None
        self._start = 0
        self._size = 0
        self._segment: _ObjectWriter | None = None
        self._replaced: list[str] = []  # segments superseded by a rewritten tail
        self._created: list[str] = []
        self._closed = False
        self._published = False  # the list at the path was replaced by this writer
        self._committed: list[dict[str, Any]] = []  # segments of the list as found

    @classmethod
    async def open(cls, driver: S3Driver, path: str, key: str) -> _AppendWriter:
        writer = cls(driver, path, key)
        await writer._lock()
        try:
            await writer._load()
        except BaseException:
            await writer._unlock()
            raise
        return writer

    async def _lock(self) -> None:
        driver = self._driver
        for _ in range(2):
            try:
                await driver._put(self._lock_key, str(time.time()).encode(), IfNoneMatch="*")
                return
            except ClientError:
                head = await driver._head(self._lock_key)
                if head is not None and time.time() - head["LastModified"].timestamp() < LOCK_LEASE:
                    raise WriterBusy(self._path) from None
                await driver._delete_keys([self._lock_key])  # a dead writer's lock
        raise WriterBusy(self._path)

    async def _unlock(self) -> None:
        await self._driver._delete_keys([self._lock_key])

    async def _load(self) -> None:
        driver = self._driver
        response = await driver._get(self._key)
        if response is None:
            raise PathNotFound(self._path)
        body = b"".join([chunk async for chunk in driver._read_body(response)])
        self._etag = response["ETag"]
        self._original = (body, response["Metadata"])
        if response["Metadata"].get(APPEND_MARK) == "1":
            self._segments = _Segments(body)
        elif body:  # a plain file becomes the first segment
            first = uuid.uuid4().hex
            await driver._put(f"{self._key}/.segments/{first}", body)
            self._created.append(first)
            self._segments.items.append({"id": first, "size": len(body)})
        self._start = self._size = self._segments.size
        self._committed = list(self._segments.items)

    @property
    def size(self) -> int:
        return self._size

    async def _open_segment(self) -> _ObjectWriter:
        """A new segment; it starts with the last one's bytes when that is below 5 MiB."""
        driver = self._driver
        head = b""
        items = self._segments.items
        if items and items[-1]["size"] < MIN_PART:
            tail = items.pop()
            response = await driver._get(f"{self._key}/.segments/{tail['id']}")
            if response is None:
                raise StorageError(f"segment {tail['id']} of {self._path} is missing")
            head = b"".join([chunk async for chunk in driver._read_body(response)])
            self._replaced.append(tail["id"])
        segment_id = uuid.uuid4().hex
        self._created.append(segment_id)
        self._pending_id = segment_id
        return _ObjectWriter(driver, f"{self._key}/.segments/{segment_id}", head)

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
        kwargs: dict[str, Any] = {"Metadata": metadata}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            answer = await self._driver._put(self._key, self._segments.encode(), **kwargs)
        except ClientError:
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
                await self._driver._delete_keys([f"{self._key}/.segments/{i}" for i in self._replaced])
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
                    await self._driver._put(self._key, body, Metadata=metadata, IfMatch=self._etag)
                except ClientError:
                    raise StorageError(f"{self._path} changed under an exclusive append") from None
            committed = {item["id"] for item in self._committed}
            await self._driver._delete_keys(
                [f"{self._key}/.segments/{i}" for i in self._created if i not in committed]
            )
        finally:
            await self._unlock()
