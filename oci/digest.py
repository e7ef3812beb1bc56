"""Content digests: one grammar, the algorithms pier can verify, and their hashers.

The OCI grammar (``algorithm ":" encoded``) names many algorithms; pier verifies only the
registered ones, each with the exact length of its lowercase hex encoding. A digest that
passes ``Digest.parse`` is therefore safe as a path component (``blobs/sha256/<hex>``):
no ``/``, no ``..``, nothing but ``[a-f0-9]`` of one fixed length.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol, Self, TypeGuard

# Algorithms pier can verify, with the exact length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
DEFAULT_ALGORITHM = "sha256"
SHORT_HEX = 12  # docker's shortest digest prefix (``pier images`` prints 12 hex digits)


def hex_pattern(algorithm: str, shortest: int | None = None) -> str:
    """The regex of ``algorithm``'s encoding: lowercase hex of its exact length (or a prefix)."""
    length = ALGORITHMS[algorithm]
    return f"[a-f0-9]{{{shortest},{length}}}" if shortest is not None else f"[a-f0-9]{{{length}}}"


# Used with fullmatch: ``$`` would also accept a trailing newline.
PATTERN = re.compile("|".join(f"{name}:{hex_pattern(name)}" for name in ALGORITHMS))
# Any digest the OCI grammar allows, verifiable by pier or not.
GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class DigestError(ValueError):
    """Not a digest pier can verify; ``unsupported`` when it is one, of another algorithm."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


class Hasher(Protocol):
    """What ``hashlib`` gives: fed in pieces, asked for the hex at the end."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Digest:
    """``algorithm:hex`` of a registered algorithm, compared and hashed by value.

    Equality is by value, not by class, so a side's own subclass (the server's maps parse
    failures to its error codes) is interchangeable with this class in sets and dicts.
    """

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def _key(self) -> tuple[str, str]:
        return self.algorithm, self.hex

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and self._key() == other._key()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Digest):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def parse(cls, value: str) -> Self:
        """A digest pier can verify, or ``DigestError`` saying why not."""
        if not PATTERN.fullmatch(value):
            algorithm = value.split(":", 1)[0]
            if GRAMMAR.fullmatch(value) and algorithm not in ALGORITHMS:
                raise DigestError(f"unsupported digest algorithm: {algorithm[:40]}", unsupported=True)
            raise DigestError(f"invalid digest: {value[:200]!r}")
        algorithm, encoded = value.split(":", 1)
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> Self:
        return cls(algorithm, new_hasher(algorithm, data).hexdigest())


def is_valid(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a digest string pier can verify."""
    return isinstance(value, str) and PATTERN.fullmatch(value) is not None


def split(value: str) -> tuple[str, str]:
    """(algorithm, hex) of a verifiable digest string; ``DigestError`` otherwise."""
    digest = Digest.parse(value)
    return digest.algorithm, digest.hex


def new_hasher(algorithm: str, data: bytes = b"") -> hashlib._Hash:
    """A hasher of a registered algorithm; ``DigestError`` for any other."""
    if algorithm not in ALGORITHMS:
        raise DigestError(f"unsupported digest algorithm: {algorithm[:40]}", unsupported=True)
    return hashlib.new(algorithm, data)


def digest_of(data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """``algorithm:hex`` of ``data`` as a string, as documents and references write it."""
    return str(Digest.of(data, algorithm))


_PREFIX = re.compile(
    f"(?:{DEFAULT_ALGORITHM}:)?{hex_pattern(DEFAULT_ALGORITHM, SHORT_HEX)}"
    + "".join(f"|{name}:{hex_pattern(name, SHORT_HEX)}" for name in ALGORITHMS if name != DEFAULT_ALGORITHM)
)


def full_prefix(text: str) -> str | None:
    """``text`` as the start of a digest (``sha256:`` added to bare hex), or None when it is not one.

    docker accepts an image's digest, or its first 12 or more hex digits, where a name goes.
    """
    if not _PREFIX.fullmatch(text):
        return None
    return text if ":" in text else f"{DEFAULT_ALGORITHM}:{text}"
