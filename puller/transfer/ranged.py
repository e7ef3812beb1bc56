"""A big blob fetched as parallel byte ranges, read in order by the unpacker as it fills.

One connection rarely fills a fast link; a few in parallel do. The blob is cut into
``parts`` ranges, each fetched by a thread of its own into its place in a file beside the
partial download (``<partial>.ranges``), and resumed from where it stopped when its
connection drops (``RETRIES`` times). The reader follows the ranges in order: it waits
for the bytes at its offset, hashes them in order, and hands them on, so the digest is
known when the last range lands. A registry that ignores ``Range`` (``200``) is read as
one stream. Nothing of a failed attempt is kept: the ranges file has holes, which a
later resume could not tell from data, so it is deleted (the next pull starts over).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx

from oci.verify import Verifier

from ..errors import PierError
from ..unpack.layer_store import ReadStream
from .raw_body import RawBodyLost, RawResponse
from .transport import ConnectionLost, error_message

RETRIES = 5
PIECE = 1 << 20  # announced to the reader at a time (each 64 KiB piece: more wake-ups than data)


class RangeError(PierError):
    """A range that could not be completed; the message says which and why."""


class RangedBlob(ReadStream):
    def __init__(
        self,
        open_range: Callable[[dict[str, str]], AbstractContextManager[httpx.Response | RawResponse]],
        digest: str,
        size: int,
        path: Path,
        parts: int,
        progress: Callable[[int], None],
        opener: Callable[[], int] | None = None,
    ) -> None:
        """``opener``: gives the file to fill (already created safely) instead of creating ``path``."""
        self.open_range = open_range
        self.digest = digest
        self.size = size
        self.path = path
        self.verifier = Verifier(digest, size)
        self.progress = progress
        self.offset = 0  # what the reader has taken
        self._stopping = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        if opener is not None:
            self._fd = opener()
        else:
            path.unlink(missing_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(self._fd, size)
        step = -(-size // parts)
        self.ranges = [
            [start, start, min(start + step, size)] for start in range(0, size, step)
        ]  # begin, filled, end
        self._threads = [
            threading.Thread(target=self._fetch, args=(number,), daemon=True)
            for number in range(len(self.ranges))
        ]
        self._others_started = False
        self._threads[0].start()

    # -- writers ----------------------------------------------------------------------

    def _fetch(self, number: int) -> None:
        attempts = 0
        try:
            while True:
                part = self.ranges[number]
                if part[1] >= part[2] or self._stopping:
                    return
                try:
                    self._fetch_once(number)
                    attempts = 0 if self.ranges[number][1] >= self.ranges[number][2] else attempts + 1
                except (httpx.TransportError, httpx.StreamError, ConnectionLost, RawBodyLost):
                    attempts += 1
                if attempts > RETRIES:
                    failed = f"bytes {part[1]}-{part[2] - 1} failed {RETRIES + 1} times in a row"
                    raise RangeError(f"blob {self.digest}: {failed}")
        except BaseException as exc:
            with self._changed:
                self._error = self._error or exc
                self._changed.notify_all()

    def _fetch_once(self, number: int) -> None:
        part = self.ranges[number]
        headers = {"Range": f"bytes={part[1]}-{part[2] - 1}"}
        with self.open_range(headers) as response:
            # Whole only while no other range runs: their writes would land over what was hashed.
            if response.status_code == 200 and number == 0 and part[1] == 0 and not self._others_started:
                self._read_whole(response)
                return
            if response.status_code != 206:
                message = (
                    error_message(response)
                    if isinstance(response, httpx.Response) and response.status_code >= 400
                    else f"HTTP {response.status_code}"
                )
                raise RangeError(f"blob {self.digest}: bytes {part[1]}-{part[2] - 1}: {message}")
            if not response.headers.get("content-range", "").startswith(f"bytes {part[1]}-"):
                raise RangeError(f"blob {self.digest}: the registry answered a different range than asked")
            if not self._others_started:
                self._others_started = True
                for thread in self._threads[1:]:
                    thread.start()  # the registry serves ranges: fetch the others too
            written = part[1]
            try:
                for chunk in response.iter_bytes():  # as received: a dropped range resumes at its last byte
                    if self._stopping:
                        return
                    if len(chunk) > part[2] - written:
                        raise RangeError(f"blob {self.digest}: the registry sent more than the range asked")
                    os.pwrite(self._fd, chunk, written)
                    written += len(chunk)
                    if written - part[1] >= PIECE or written == part[2]:
                        self._announce(part, written)
            finally:
                self._announce(part, written)  # what was written stays, whatever stopped the range

    def _announce(self, part: list[int], written: int) -> None:
        """Tell the reader how far a range has been written: every 1 MiB, not every piece."""
        if written > part[1]:
            with self._changed:
                part[1] = written
                self._changed.notify_all()

    def _read_whole(self, response: httpx.Response | RawResponse) -> None:
        """Range was ignored: the whole body lands in range 0, which now spans the blob."""
        with self._changed:
            self.ranges[:] = [[0, 0, self.size]]
        written = 0
        for chunk in response.iter_bytes(PIECE):  # not resumed if cut: a registry without Range
            if self._stopping:
                return
            if written + len(chunk) > self.size:
                raise RangeError(f"blob {self.digest} is larger than the {self.size} bytes its manifest says")
            os.pwrite(self._fd, chunk, written)
            written += len(chunk)
            with self._changed:
                self.ranges[0][1] = written
                self._changed.notify_all()

    # -- the reader -------------------------------------------------------------------

    def _available(self) -> int:
        """Bytes at ``offset`` ready to read (callers hold the condition)."""
        for begin, filled, end in self.ranges:
            if begin <= self.offset < end:
                return filled - self.offset if filled > self.offset else 0
        return 0

    def read(self, size: int = -1, /) -> bytes:
        if self.offset >= self.size:
            return b""
        with self._changed:
            while (ready := self._available()) == 0:
                if self._error is not None:
                    raise self._error
                if not any(thread.is_alive() for thread in self._threads if thread.ident is not None):
                    raise RangeError(f"blob {self.digest}: the registry stopped at byte {self.offset}")
                self._changed.wait(1.0)
        count = ready if size < 0 else min(size, ready, 1 << 20)
        data = os.pread(self._fd, count, self.offset)
        self.offset += len(data)
        self.verifier.update(data)
        self.progress(self.offset)
        return data

    def close(self) -> None:
        self._stopping = True
        for thread in self._threads:
            if thread.ident is not None:
                thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fsync(self) -> None:
        os.fsync(self._fd)
