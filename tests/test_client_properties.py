"""Property tests for the client's parsers: references, platforms, documents, challenges.

Each parser takes text from users or from registries; for any input it must either give a
well-formed result or raise its own error type, never anything else.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oci.challenge import ChallengeError, parse_challenges
from puller.reference import InvalidReference, parse_reference
from puller.store.image import InvalidDocument, check_document, is_index
from puller.store.platforms import Platform, PlatformError

pytestmark = pytest.mark.slow  # hypothesis, hundreds of examples per property

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
WORD = ALNUM + "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
alnum = st.text(ALNUM, min_size=1, max_size=6)
component = st.builds(
    lambda head, separator, tail: head + (separator + tail if tail else ""),
    alnum,
    st.sampled_from([".", "_", "__", "-", "--"]),
    st.none() | alnum,
)
domain = st.sampled_from(
    ["", "localhost/", "localhost:5000/", "127.0.0.1:5000/", "[::1]:443/", "ghcr.io/", "docker.io/"]
)
tag = st.builds(lambda first, rest: first + rest, st.sampled_from(WORD), st.text(WORD + ".-", max_size=12))
digest = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@settings(max_examples=300, deadline=None)
@given(domain, st.lists(component, min_size=1, max_size=4), st.none() | tag, st.none() | digest)
def test_a_valid_reference_round_trips(prefix, parts, tag_, digest_) -> None:
    text = prefix + "/".join(parts) + (f":{tag_}" if tag_ else "") + (f"@{digest_}" if digest_ else "")
    reference = parse_reference(text)
    assert parse_reference(str(reference)) == reference  # the canonical form names the same image
    assert parse_reference(reference.familiar()) == reference
    assert reference.digest == digest_
    assert reference.tag == (tag_ or (None if digest_ else "latest"))
    assert ".." not in reference.path.split("/")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_any_text_parses_or_raises_reference_error(text) -> None:
    try:
        reference = parse_reference(text)
    except InvalidReference:
        return
    assert reference.path and not reference.path.startswith("/")
    assert all(part not in ("", ".", "..") for part in reference.path.split("/"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_platform_text_parses_or_raises_platform_error(text) -> None:
    try:
        platform = Platform.parse(text)
    except PlatformError:
        return
    assert str(platform) == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
descriptor_like = st.fixed_dictionaries(
    {},
    optional={
        "digest": st.sampled_from(["sha256:" + "a" * 64, "sha256:../x", "", 5]) | json_values,
        "size": st.integers(-3, 10) | json_values,
        "mediaType": st.text(max_size=5) | json_values,
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "config": descriptor_like | json_values,
        "layers": st.lists(descriptor_like | json_values, max_size=3) | json_values,
        "manifests": st.lists(descriptor_like | json_values, max_size=3) | json_values,
        "mediaType": st.sampled_from(["application/vnd.oci.image.index.v1+json", "x"]) | json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(documents | json_values)
def test_a_checked_document_has_only_well_formed_descriptors(document) -> None:
    try:
        checked = check_document(json.dumps(document).encode())
    except InvalidDocument:
        return
    descriptors = checked["manifests"] if is_index(checked) else [checked["config"], *checked["layers"]]
    for descriptor in descriptors:
        assert descriptor["digest"].startswith("sha256:") and len(descriptor["digest"]) == 71
        assert isinstance(descriptor["size"], int) and descriptor["size"] >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_challenge_header_parses(header) -> None:
    """Any header parses or raises ChallengeError; schemes and parameter names come out lowercased."""
    try:
        challenges = parse_challenges(header)
    except ChallengeError:
        return
    for challenge in challenges:
        assert challenge.scheme and challenge.scheme == challenge.scheme.lower()
        assert all(key == key.lower() for key in challenge.params)
