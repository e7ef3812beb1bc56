"""Logging: a readable line per request by default, one JSON object per line when asked.

The access log is written by the app itself (uvicorn's own is off) because only the app
knows the route template, the repository and the authenticated user. It never holds
headers, query strings or bodies, so passwords, tokens and upload state stay out of it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

access_log = logging.getLogger("pier.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_UNPRINTABLE = re.compile(r'[^\x21-\x7e]|["\\]')


def request_id(header: bytes | None) -> str:
    """The caller's ``X-Request-Id`` when it is a sane token (so a proxy's id carries through)."""
    if header is not None:
        text = header.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


def _printable(text: str, limit: int = 300) -> str:
    """A path as one safe line: no spaces, quotes or control characters to forge log lines with."""
    return _UNPRINTABLE.sub(lambda m: f"%{ord(m.group()):02X}" if ord(m.group()) < 256 else "?", text[:limit])


@dataclass
class AccessRecord:
    request_id: str
    remote: str
    user: str
    method: str
    route: str
    path: str
    repository: str
    status: int
    bytes_in: int
    bytes_out: int
    seconds: float
    user_agent: str

    def as_json(self) -> str:
        return json.dumps(
            {
                "time": _utc(time.time()),
                "request_id": self.request_id,
                "remote": self.remote,
                "user": self.user or None,
                "method": self.method,
                "route": self.route,
                "path": self.path[:1000],
                "repository": self.repository or None,
                "status": self.status,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "duration_ms": round(self.seconds * 1000, 3),
                "user_agent": self.user_agent[:200],
            },
            ensure_ascii=True,
        )

    def as_text(self) -> str:
        return (
            f'{self.remote} {_printable(self.user) or "-"} "{self.method} {_printable(self.path)}" '
            f"{self.status} {self.bytes_out} {self.seconds * 1000:.1f}ms id={self.request_id}"
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
        "formatters": {"default": formatter, "access": {"format": "%(message)s"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "pier": {"handlers": ["default"], "level": level, "propagate": False},
            "pier.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
