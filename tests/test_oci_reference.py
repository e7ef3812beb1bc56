"""``oci.reference``: repository names and tags as the server checks them, references as docker reads them."""

from __future__ import annotations

import pytest

from oci.reference import (
    InvalidReference,
    Reference,
    is_repository_name,
    is_repository_prefix,
    is_tag,
    official_name,
    parse_reference,
    split_domain,
)


@pytest.mark.parametrize("name", ["a", "library/python", "a.b_c__d---e/f", "x" * 255, "0/1/2"])
def test_repository_names(name: str) -> None:
    assert is_repository_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "a/../b", "..", "a/./b", "a_", "-a", "a___b", "a\n", "x" * 256, "a:b", "é"],
)
def test_hostile_repository_names(name: str) -> None:
    assert not is_repository_name(name)


def test_a_prefix_has_no_length_limit_of_its_own() -> None:
    assert is_repository_prefix("docker.io") and is_repository_prefix("ghcr.io/org")
    assert not is_repository_prefix("Docker.io") and not is_repository_prefix("")


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A" * 128, "a-b_c.d"])
def test_tags(tag: str) -> None:
    assert is_tag(tag)


@pytest.mark.parametrize("tag", ["", ".x", "-x", "A" * 129, "a/b", "a:b", "..", "a\n", "ä"])
def test_hostile_tags(tag: str) -> None:
    assert not is_tag(tag)


def test_docker_hub_normalisation() -> None:
    assert parse_reference("python") == Reference("docker.io", "library/python", "latest", None)
    assert parse_reference("index.docker.io/user/app:v1") == Reference("docker.io", "user/app", "v1", None)
    assert split_domain("localhost/app") == ("localhost", "app")
    assert split_domain("Registry/app")[0] == "Registry"  # uppercase: a host, not a namespace
    assert official_name("python") == "library/python" and official_name("a/b") == "a/b"
    digest = "sha256:" + "a" * 64
    pinned = parse_reference(f"[::1]:5000/x@{digest}")
    assert (pinned.domain, pinned.tag, pinned.identifier) == ("[::1]:5000", None, digest)
    assert pinned.api_host == "[::1]:5000" and parse_reference("x").api_host == "registry-1.docker.io"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("a b", "whitespace"),
        ("Python", "must be lowercase"),
        ("a/../b", "invalid reference format"),
        ("x@md5:" + "0" * 32, "unsupported digest algorithm"),
        ("x@sha256:" + "a" * 63, "invalid sha256 digest"),
        ("x@sha256:" + "A" * 64, "invalid sha256 digest"),
        ("x/" + "a" * 300, "longer than 255"),
    ],
)
def test_hostile_references(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_reference(text)
