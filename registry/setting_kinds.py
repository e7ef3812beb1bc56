"""How a setting's value is read from text and written back: sizes, durations, booleans, choices.

A value may come from a config file (where TOML or YAML may already have made it a number,
a boolean, a list or tables), a ``PIER_*`` variable or a flag. Each kind reads all of these
and, when it cannot, says what it expected, so every source fails with the same words.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from oci import units

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"addr must be HOST:PORT, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_size(value: object) -> int:
    """Bytes from an int or a size in docker's units (``64MB`` = 64x10^6, ``64MiB``/``64M`` = 64x2^20)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return units.parse_size(str(value))
    except ValueError:
        raise ConfigError(f"not a size: {value!r}") from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """Seconds from a number or ``30s``, ``5m``, ``24h``, ``30d`` (a bare number is seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"not a duration: {value!r}")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that writes it whole: ``24h``, ``5m``, ``0s``."""
    order = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    unit, size = next((u, s) for u, s in order if seconds % s == 0) if seconds else ("s", 1)
    return f"{seconds / size:g}{unit}"


class Kind(ABC, Generic[T]):
    """One way of reading a setting. ``expected`` completes "X must be ..." in errors;
    ``placeholder`` is its flag's value in ``--help``; ``bare`` is what the flag means given
    without a value (None: it needs one)."""

    expected = "a value"
    placeholder = "VALUE"
    bare: str | None = None

    @abstractmethod
    def read(self, value: object) -> T:
        """The value, or ValueError/TypeError."""

    def write(self, value: T) -> str:
        """The value as a user would write it: ``100GiB``, ``24h``, ``true``."""
        return str(value)

    def parse(self, value: object, source: str) -> T:
        """Read ``value``; a bad one fails naming ``source`` (``--log-level``, ``PIER_LOG_LEVEL``,
        ``pier.toml: log_level``), so the user knows what to fix."""
        try:
            return self.read(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{source} must be {self.expected}, not {value!r}") from None


class Size(Kind[int]):
    expected = "a size (e.g. 4MiB, 100GiB)"
    placeholder = "SIZE"

    def read(self, value: object) -> int:
        return parse_size(value)

    def write(self, value: int) -> str:
        return units.exact_size(value)


class Duration(Kind[float]):
    expected = "a duration (e.g. 30s, 5m, 24h)"
    placeholder = "DURATION"

    def read(self, value: object) -> float:
        return parse_duration(value)

    def write(self, value: float) -> str:
        return format_duration(value)


class Boolean(Kind[bool]):
    expected = "true or false"
    placeholder = "true|false"
    bare = "true"

    def read(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)

    def write(self, value: bool) -> str:
        return str(value).lower()


class Integer(Kind[int]):
    expected = "an integer"
    placeholder = "N"

    def read(self, value: object) -> int:
        if isinstance(value, str | int | float):
            return int(value)
        raise TypeError(value)


class Text(Kind[str]):
    def read(self, value: object) -> str:
        return str(value)


class Choice(Kind[str]):
    """One of a fixed set of words, checked wherever the value comes from."""

    def __init__(self, *values: str) -> None:
        self.values = values
        self.expected = f"one of {', '.join(values)}"
        self.placeholder = "|".join(values)

    def read(self, value: object) -> str:
        if str(value) not in self.values:
            raise ValueError(value)
        return str(value)


class Address(Kind[str]):
    expected = "HOST:PORT"
    placeholder = "HOST:PORT"

    def read(self, value: object) -> str:
        split_addr(str(value))
        return str(value)


class CommaList(Kind[str]):
    """Items separated by commas; a config file may give a list instead."""

    def read(self, value: object) -> str:
        return ",".join(str(item) for item in value) if isinstance(value, list) else str(value)


class JsonText(Kind[str]):
    """JSON text; a config file may give the structure itself (TOML tables, YAML lists)."""

    expected = "JSON"
    placeholder = "JSON"

    def read(self, value: object) -> str:
        return value if isinstance(value, str) else json.dumps(value)


SIZE, DURATION, BOOLEAN, INTEGER, TEXT = Size(), Duration(), Boolean(), Integer(), Text()
ADDRESS, COMMA_LIST, JSON_TEXT = Address(), CommaList(), JsonText()
