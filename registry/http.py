"""Small HTTP helpers shared by the handlers: headers in, responses out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import RegistryError
from .streams import BodyTooLarge

API_VERSION_HEADER = ("docker-distribution-api-version", "registry/2.0")
_DECIMAL = re.compile(r"[0-9]{1,19}")


def is_decimal(value: str) -> bool:
    """ASCII digits that fit in 64 bits (``str.isdigit`` also takes "²" and 5000-digit numbers)."""
    return _DECIMAL.fullmatch(value) is not None


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None, media_type: str = "application/json"
) -> Response:
    return Response(json.dumps(data).encode(), status, headers, media_type)


ZERO_COPY = "http.response.zerocopysend"  # the ASGI extension registry.protocol offers
CUT = "pier.response.cut"  # registry.protocol's extension: end a started response by closing it


class CutShort(Exception):
    """A body that cannot be completed (its source failed): the connection is cut, which is
    how HTTP/1.1 tells a client that a body with a Content-Length is incomplete."""


class CuttableStreamingResponse(StreamingResponse):
    """A stream that may end in ``CutShort``: the connection is closed (``CUT``) without an
    error in the log, since whoever raised it has said why."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except BaseException as exc:
            if not _cut_short(exc) or CUT not in scope.get("extensions", {}):
                raise
            await send({"type": CUT})


def _cut_short(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_cut_short(inner) for inner in exc.exceptions)
    return isinstance(exc, CutShort)


class FileSendResponse(Response):
    """Bytes of an open local file, sent by the kernel (the server's ``ZERO_COPY`` extension,
    which the caller checked is on offer); the file is closed once sent or abandoned."""

    def __init__(
        self, file: BinaryIO, offset: int, length: int, status: int, headers: dict[str, str]
    ) -> None:
        super().__init__(b"", status, {**headers, "content-length": str(length)})
        self.file, self.offset, self.length = file, offset, length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            if scope["method"] == "HEAD":
                await send({"type": "http.response.body", "body": b""})
            else:
                await send(
                    {"type": ZERO_COPY, "file": self.file, "offset": self.offset, "count": self.length}
                )
        finally:
            self.file.close()


class RawResponse(Response):
    """A response from headers already encoded: Starlette's constructor lowers and encodes each
    header and scans them for two names, a fifth of a manifest HEAD's request layer."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        self.status_code = status
        self.background = None
        self.body = body
        self.raw_headers = raw_headers


def error_response(error: RegistryError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def empty_response(status: int, headers: dict[str, str]) -> Response:
    return Response(b"", status, {**headers, "content-length": "0"})


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not is_decimal(value):
        raise RegistryError("SIZE_INVALID", f"invalid Content-Length: {value[:40]!r}")
    return int(value)


def has_body(request: Request) -> bool:
    length = content_length(request)
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """Read a small body whole, refusing (413) as soon as it passes ``limit``."""
    length = content_length(request)
    if length is not None and length > limit:
        raise RegistryError("MANIFEST_INVALID", f"{what} is larger than {limit} bytes", status=413)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(len(body))
    except BodyTooLarge:
        raise RegistryError("MANIFEST_INVALID", f"{what} is larger than {limit} bytes", status=413) from None
    except ClientDisconnect:
        raise RegistryError("SIZE_INVALID", "client disconnected before the body ended") from None
    if length is not None and len(body) != length:
        raise RegistryError("SIZE_INVALID", f"received {len(body)} bytes, Content-Length said {length}")
    return bytes(body)


def parse_byte_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (start, end inclusive); None means serve the whole blob.

    Raises a 416 ``RegistryError`` when the range cannot be satisfied.
    """
    unsatisfiable = RegistryError(
        "BLOB_UNKNOWN",
        f"range {header[:80]!r} not satisfiable",
        message="requested range not satisfiable",
        status=416,
        headers={"Content-Range": f"bytes */{size}"},
    )
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multipart ranges: the whole body is a valid answer
    first, sep, last = spec.strip().partition("-")
    if not sep or (first and not is_decimal(first)) or (last and not is_decimal(last)) or not (first or last):
        return None  # a syntactically invalid Range is ignored (RFC 9110 14.2)
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return max(size - suffix, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored: serve the whole blob
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise unsatisfiable
    return start, end


@dataclass
class ContentRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_content_range(value: str) -> ContentRange:
    """``<start>-<end>`` as the spec writes it (a ``bytes `` prefix is tolerated)."""
    text = value.strip()
    for prefix in ("bytes ", "bytes="):
        if text.startswith(prefix):
            text = text[len(prefix) :].split("/", 1)[0]
    start, sep, end = text.partition("-")
    if not sep or not is_decimal(start) or not is_decimal(end):
        raise RegistryError("BLOB_UPLOAD_INVALID", f"malformed Content-Range: {value[:80]!r}", status=416)
    parsed = ContentRange(int(start), int(end))
    if parsed.end < parsed.start:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID", f"Content-Range ends before it starts: {value!r}", status=416
        )
    return parsed
