"""``oci.digest``: one grammar for every digest pier turns into a path or checks content against."""

from __future__ import annotations

import hashlib

import pytest

from oci.digest import Digest, DigestError, full_prefix, is_valid, new_hasher, split

SHA256 = "sha256:" + hashlib.sha256(b"x").hexdigest()
SHA512 = "sha512:" + hashlib.sha512(b"x").hexdigest()


def test_registered_digests_parse_and_print_back() -> None:
    for text in (SHA256, SHA512):
        digest = Digest.parse(text)
        assert str(digest) == text and is_valid(text)
        assert split(text) == (digest.algorithm, digest.hex)
    assert Digest.of(b"x") == Digest.parse(SHA256)
    assert Digest.of(b"x", "sha512") == Digest.parse(SHA512)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,  # one short
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,  # uppercase hex is not the canonical encoding
        "sha512:" + "a" * 64,  # the length of another algorithm
        "sha256:../../../../etc/passwd",
        "sha256:" + "a" * 63 + "/",
        "sha256:" + "a" * 64 + "\n",  # fullmatch, not a `$` that takes a trailing newline
        " sha256:" + "a" * 64,
        "sha256" + "a" * 64,
        "SHA256:" + "a" * 64,
    ],
)
def test_malformed_digests_are_refused(text: str) -> None:
    assert not is_valid(text)
    with pytest.raises(DigestError) as refused:
        Digest.parse(text)
    assert not refused.value.unsupported


@pytest.mark.parametrize("text", ["md5:" + "0" * 32, "blake3:" + "a" * 64, "sha384:" + "a" * 96])
def test_digests_of_other_algorithms_are_unsupported(text: str) -> None:
    with pytest.raises(DigestError, match="unsupported digest algorithm") as refused:
        Digest.parse(text)
    assert refused.value.unsupported


def test_non_strings_are_not_digests() -> None:
    for value in (None, 5, ["sha256:" + "a" * 64], {"digest": SHA256}):
        assert not is_valid(value)


def test_hashers_only_for_registered_algorithms() -> None:
    assert new_hasher("sha256", b"x").hexdigest() == hashlib.sha256(b"x").hexdigest()
    for name in ("md5", "sha1", "blake2b", "../sha256"):
        with pytest.raises(DigestError):
            new_hasher(name)


def test_a_subclass_is_equal_by_value() -> None:
    class Server(Digest):
        pass

    assert Server.parse(SHA256) == Digest.parse(SHA256)
    assert {Server.parse(SHA256)} == {Digest.parse(SHA256)}
    assert sorted([Digest.parse(SHA512), Server.parse(SHA256)])[0] == Digest.parse(SHA256)


@pytest.mark.parametrize(
    "text, prefix",
    [
        ("a" * 12, "sha256:" + "a" * 12),
        ("sha256:" + "a" * 64, "sha256:" + "a" * 64),
        ("sha512:" + "b" * 20, "sha512:" + "b" * 20),
        ("a" * 11, None),  # too short to name one image
        ("a" * 65, None),
        ("sha256:../x" + "a" * 12, None),
        ("md5:" + "a" * 12, None),
        ("A" * 12, None),
    ],
)
def test_digest_prefixes(text: str, prefix: str | None) -> None:
    assert full_prefix(text) == prefix
