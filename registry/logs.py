"""Logging: a readable line per request by default, one JSON object per line when asked.

The access log is written by the app itself (uvicorn's own is off) because only the app
knows the route template, the repository and the authenticated user. It never holds
headers (but User-Agent), query strings or bodies, so passwords, tokens and upload state
stay out of it. Other records go through ``logging``, as JSON objects with ``log_format=json``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import sys
import time
from json.encoder import encode_basestring_ascii as _q
from typing import Any, TextIO

from starlette.types import Scope

from .auth import ANONYMOUS

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_UNPRINTABLE = re.compile(r'[^\x21-\x7e]|["\\]')
FIELD_CACHE = 4096  # distinct (method, route, path, repository, user, agent) lines kept formatted
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(6).hex()  # per process: ids stay unique across replicas and restarts


def request_id(header: bytes | None) -> str:
    """The caller's ``X-Request-Id`` when it is a sane token (so a proxy's id carries through)."""
    if header is not None:
        text = header.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return f"{_ID_PREFIX}{next(_ids):08x}"  # a counter, not uuid4: no system call per request


def _printable(text: str, limit: int = 300) -> str:
    """A path as one safe line: no spaces, quotes or control characters to forge log lines with."""
    return _UNPRINTABLE.sub(lambda m: f"%{ord(m.group()):02X}" if ord(m.group()) < 256 else "?", text[:limit])


class AccessLog:
    """One line per request on standard output, in ``text`` or ``json``.

    A request only appends its scope and figures to a list; the lines are formatted and
    written in batches, every ``FLUSH_INTERVAL`` (and at ``MAX_PENDING`` requests, and at
    shutdown). The logging module's record, formatter and flush per line cost more than
    the rest of a manifest HEAD; this costs under 4 µs a line.
    """

    FLUSH_INTERVAL = 0.2
    MAX_PENDING = 2000

    def __init__(self, log_format: str, stream: TextIO | None = None) -> None:
        self.json = log_format == "json"
        self.stream = stream or sys.stdout
        self._pending: list[tuple[Any, ...]] = []
        self._second = -1
        self._stamp = ""
        self._fields: dict[tuple[Any, ...], str] = {}

    def record(self, scope: Scope, status: int, received: int, sent: int, seconds: float) -> None:
        # Only plain values are kept: holding on to scopes would make every GC pass longer.
        caller = scope.get("pier.caller")
        self._pending.append(
            (
                scope.get("client"),
                caller.account if caller is not None and caller.account != ANONYMOUS else "",
                scope["method"],
                scope["path"],
                scope.get("pier.request_id", ""),
                scope.get("pier.route", "other"),
                scope.get("pier.repository"),
                next((v for k, v in scope["headers"] if k == b"user-agent"), b"") if self.json else b"",
                status,
                received,
                sent,
                seconds,
                time.time(),
            )
        )
        if len(self._pending) >= self.MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self.stream.write("".join([self._line(*entry) for entry in pending]))
        self.stream.flush()

    async def flush_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.FLUSH_INTERVAL)
                self.flush()
        finally:
            self.flush()

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def _line(
        self,
        client: tuple[str, int] | None,
        user: str,
        method: str,
        path: str,
        rid: str,
        route: str,
        repository: str | None,
        agent: bytes,
        status: int,
        received: int,
        sent: int,
        seconds: float,
        now: float,
    ) -> str:
        remote = f"{client[0]}:{client[1]}" if client else "-"
        if not self.json:
            return (
                f'{remote} {_printable(user) or "-"} "{_printable(method, 20)} {_printable(path)}" '
                f"{status} {sent} {seconds * 1000:.1f}ms id={rid}\n"
            )
        key = (method, route, path, repository, user, agent)
        fields = self._fields.get(key)
        if fields is None:  # the same few paths, by the same clients, make most of the traffic
            if len(self._fields) >= FIELD_CACHE:
                self._fields.clear()
            fields = self._fields[key] = (
                f'"user": {_q(user) if user else "null"}, "method": {_q(method[:20])}, '
                f'"route": "{route}", "path": {_q(path[:1000])}, '
                f'"repository": {_q(repository) if repository else "null"}, '
                f'"user_agent": {_q(agent[:200].decode("latin-1"))}'
            )
        return (
            f'{{"time": "{self._time(now)}", "request_id": "{rid}", "remote": "{remote}", {fields}, '
            f'"status": {status}, "bytes_in": {received}, "bytes_out": {sent}, '
            f'"duration_ms": {seconds * 1000:.3f}}}\n'
        )


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Every other log record as one JSON object: time, level, logger, message (and error)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """A ``logging.config`` dictionary for uvicorn to apply (in every worker process too)."""
    level = level.upper()
    formatter = (
        {"()": "registry.logs.JsonFormatter"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "pier": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
