"""References are normalised exactly as docker normalises them."""

from __future__ import annotations

import pytest

from puller.reference import InvalidReference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("python", "docker.io", "library/python", "latest", None),
        ("python:3.12", "docker.io", "library/python", "3.12", None),
        ("user/repo", "docker.io", "user/repo", "latest", None),
        ("docker.io/python", "docker.io", "library/python", "latest", None),
        ("index.docker.io/user/repo:v1", "docker.io", "user/repo", "v1", None),
        ("localhost/repo", "localhost", "repo", "latest", None),
        ("localhost:5000/ns/repo:tag", "localhost:5000", "ns/repo", "tag", None),
        ("127.0.0.1:5000/repo", "127.0.0.1:5000", "repo", "latest", None),
        ("[::1]:5000/repo", "[::1]:5000", "repo", "latest", None),
        ("ghcr.io/org/team/image:1.0", "ghcr.io", "org/team/image", "1.0", None),
        ("Registry.Example/repo", "Registry.Example", "repo", "latest", None),
        (f"python@{DIGEST}", "docker.io", "library/python", None, DIGEST),
        (f"python:3.12@{DIGEST}", "docker.io", "library/python", "3.12", DIGEST),
        (f"host:5000/a/b:c@{DIGEST}", "host:5000", "a/b", "c", DIGEST),
        ("a__b/c-d.e_f:Tag_1.x", "docker.io", "a__b/c-d.e_f", "Tag_1.x", None),
    ],
)
def test_normalisation(text: str, domain: str, path: str, tag: str | None, digest: str | None) -> None:
    reference = parse_reference(text)
    assert (reference.domain, reference.path, reference.tag, reference.digest) == (domain, path, tag, digest)


def test_api_host_and_identifier() -> None:
    hub = parse_reference("python:3.12")
    assert hub.api_host == "registry-1.docker.io"
    assert hub.identifier == "3.12"
    assert str(hub) == "docker.io/library/python:3.12"
    assert hub.familiar() == "python:3.12"
    pinned = parse_reference(f"localhost:5000/x:y@{DIGEST}")
    assert pinned.api_host == "localhost:5000"
    assert pinned.identifier == DIGEST
    assert pinned.familiar() == f"localhost:5000/x:y@{DIGEST}"
    assert parse_reference("user/repo").familiar() == "user/repo:latest"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Python", "lowercase"),
        ("user/Repo", "lowercase"),
        ("repo:", "invalid reference format"),
        ("repo@sha256:abc", "invalid"),
        (f"repo@md5:{'a' * 32}", "unsupported digest algorithm"),
        ("repo@sha256:" + "AB" * 32, "invalid sha256 digest"),
        ("a/../b", "invalid reference format"),
        ("/abs", "invalid reference format"),
        ("repo:" + "t" * 129, "invalid reference format"),
        ("re po", "whitespace"),
        ("repo\n", "whitespace"),
        ("-repo", "invalid reference format"),
        ("host:port/repo", "invalid reference format"),
        ("a/" + "b" * 260, "longer than 255"),
    ],
)
def test_invalid_references(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_reference(text)
