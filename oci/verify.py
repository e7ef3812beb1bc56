"""Content checked against its descriptor as it streams: hashed, counted, never trusted.

A ``Verifier`` is fed the pieces of a blob in order. It refuses a piece that takes the
total past the declared size at once (a hostile source cannot make anyone store or
forward more than it declared), and ``check`` at the end compares the size and the
digest. A failure is a ``VerifyError``; each side turns it into its own error.
"""

from __future__ import annotations

from .digest import Digest, new_hasher


class VerifyError(ValueError):
    """Content that is not what its descriptor says; ``actual`` once the whole was hashed."""

    def __init__(self, message: str, expected: Digest, received: int, actual: Digest | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.received = received
        self.actual = actual


class Verifier:
    """Hash and count ``expected``'s bytes as they pass; ``size`` None when nobody declared one."""

    def __init__(self, expected: Digest | str, size: int | None = None) -> None:
        self.expected = expected if isinstance(expected, Digest) else Digest.parse(expected)
        self.size = size
        self.received = 0
        self._hasher = new_hasher(self.expected.algorithm)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        """Take the next piece; ``VerifyError`` as soon as there is more than the declared size."""
        if self.size is not None and self.received + len(data) > self.size:
            self.received += len(data)
            raise VerifyError(
                f"{self.expected}: more than the {self.size} bytes declared", self.expected, self.received
            )
        self._hasher.update(data)
        self.received += len(data)

    def restart(self) -> None:
        """Forget what was fed (a transfer that starts over from its first byte)."""
        self._hasher = new_hasher(self.expected.algorithm)
        self.received = 0

    def hexdigest(self) -> str:
        """The hex of what was fed so far: a ``Verifier`` goes wherever a hasher does."""
        return self._hasher.hexdigest()

    @property
    def actual(self) -> Digest:
        """The digest of what was fed so far."""
        return Digest(self.expected.algorithm, self.hexdigest())

    def check(self) -> None:
        """``VerifyError`` unless what was fed is exactly the declared size and digest."""
        actual = self.actual
        if self.size is not None and self.received != self.size:
            raise VerifyError(
                f"{self.expected}: {self.received} bytes, not the {self.size} declared",
                self.expected,
                self.received,
                actual,
            )
        if actual != self.expected:
            message = f"digest mismatch: expected {self.expected}, got {actual}"
            raise VerifyError(message, self.expected, self.received, actual)


def verify_bytes(data: bytes, expected: Digest | str, size: int | None = None) -> None:
    """Check content held whole (a manifest, a config) against its descriptor."""
    verifier = Verifier(expected, size)
    verifier.update(data)
    verifier.check()
