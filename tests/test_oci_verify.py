"""``oci.verify``: content hashed and counted as it streams, refused past its declared size."""

from __future__ import annotations

import hashlib

import pytest

from oci.digest import Digest
from oci.verify import Verifier, VerifyError, verify_bytes

DATA = b"0123456789" * 100
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def feed(verifier: Verifier, data: bytes, piece: int = 7) -> None:
    for start in range(0, len(data), piece):
        verifier.update(data[start : start + piece])


def test_the_right_bytes_in_pieces_pass() -> None:
    verifier = Verifier(DIGEST, len(DATA))
    feed(verifier, DATA)
    verifier.check()
    assert verifier.received == len(DATA) and verifier.actual == Digest.parse(DIGEST)


def test_a_truncated_stream_fails_at_the_end() -> None:
    verifier = Verifier(DIGEST, len(DATA))
    feed(verifier, DATA[:-1])
    with pytest.raises(VerifyError, match="not the 1000 declared") as failed:
        verifier.check()
    assert failed.value.received == len(DATA) - 1 and failed.value.actual is not None


def test_one_byte_past_the_declared_size_is_refused_at_once() -> None:
    verifier = Verifier(DIGEST, len(DATA))
    feed(verifier, DATA)
    with pytest.raises(VerifyError, match="more than the 1000 bytes"):
        verifier.update(b"x")


def test_the_wrong_bytes_of_the_right_size_fail() -> None:
    verifier = Verifier(DIGEST, len(DATA))
    feed(verifier, DATA[:-1] + b"!")
    with pytest.raises(VerifyError, match="digest mismatch") as failed:
        verifier.check()
    assert failed.value.expected == Digest.parse(DIGEST) and failed.value.actual != failed.value.expected


def test_without_a_declared_size_only_the_digest_counts() -> None:
    verifier = Verifier(DIGEST)
    feed(verifier, DATA)
    verifier.check()


def test_a_restart_forgets_what_was_fed() -> None:
    verifier = Verifier(DIGEST, len(DATA))
    feed(verifier, b"garbage")
    verifier.restart()
    feed(verifier, DATA)
    verifier.check()


def test_whole_content() -> None:
    verify_bytes(DATA, DIGEST, len(DATA))
    with pytest.raises(VerifyError):
        verify_bytes(DATA + b"x", DIGEST, len(DATA))
    with pytest.raises(VerifyError):
        verify_bytes(b"", DIGEST)


def test_an_expected_digest_must_be_verifiable() -> None:
    with pytest.raises(ValueError):
        Verifier("md5:" + "0" * 32)
    with pytest.raises(ValueError):
        Verifier("sha256:../../etc/passwd")
