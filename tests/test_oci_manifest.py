"""``oci.manifest``: one validation for a pushed manifest (strict) and a pulled or loaded one."""

from __future__ import annotations

import json

import pytest

from oci.digest import Digest
from oci.manifest import ManifestError, is_index, parse_manifest
from oci.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

ZERO = "sha256:" + "0" * 64
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": ZERO, "size": 2}


def body(**fields: object) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": [], **fields}
    ).encode()


def index(**fields: object) -> bytes:
    return json.dumps({"schemaVersion": 2, **fields}).encode()


def test_an_image_and_an_index() -> None:
    image = parse_manifest(body(layers=[{**CONFIG, "urls": ["https://x"]}]))
    assert not image.is_index and image.media_type == OCI_MANIFEST
    assert [d.digest for d in image.blobs] == [Digest.parse(ZERO)] * 2 and image.blobs[1].urls == [
        "https://x"
    ]
    assert image.artifact_type == CONFIG["mediaType"]  # the referrers API's fallback
    entry = {"mediaType": OCI_MANIFEST, "digest": ZERO, "size": 5, "platform": {"os": "linux"}}
    parsed = parse_manifest(index(manifests=[entry]))
    assert parsed.is_index and parsed.media_type == OCI_INDEX and parsed.children[0].size == 5


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (
            body(config={**CONFIG, "digest": "sha256:../../etc/passwd"}),
            "config has an invalid or unsupported digest",
        ),
        (body(config={**CONFIG, "digest": "md5:" + "0" * 32}), "invalid or unsupported digest"),
        (body(config={**CONFIG, "digest": ZERO[:-1]}), "invalid or unsupported digest"),
        (body(config={**CONFIG, "size": -1}), "invalid size"),
        (body(config={**CONFIG, "size": True}), "invalid size"),
        (body(config={**CONFIG, "size": "2"}), "invalid size"),
        (body(config="x"), "config is not a descriptor"),
        (body(layers={"digest": ZERO}), "without a layers list"),
        (body(layers=[5]), "layers[0] is not a descriptor"),
        (body(layers=[{**CONFIG, "urls": "https://x"}]), "urls must be a list of strings"),
        (body(subject={"digest": ZERO}), "subject has an invalid"),
        (body(annotations={"a": 1}), "annotations must map strings to strings"),
        (body(artifactType=5), "artifactType must be a string"),
        (body(mediaType=5), "mediaType must be a string"),
        (index(mediaType=OCI_INDEX, manifests={}), "without a manifests list"),
        (index(manifests=[{**CONFIG, "platform": {"os": 5}}]), "invalid platform"),
        (index(manifests=[{**CONFIG, "platform": []}]), "invalid platform"),
    ],
)
def test_hostile_documents_are_refused_either_way(raw: bytes, message: str) -> None:
    for strict in (True, False):
        with pytest.raises(ManifestError, match=message.replace("[", r"\[")):
            parse_manifest(raw, strict=strict)


def test_nesting_is_refused_before_parsing() -> None:
    for depth in (40, 100_000):
        with pytest.raises(ManifestError) as refused:
            parse_manifest(b'{"annotations": ' + b"[" * depth + b"]" * depth + b"}")
        assert refused.value.too_deep


def test_only_a_strict_parse_wants_the_registry_rules() -> None:
    lenient = [
        json.dumps({"mediaType": OCI_MANIFEST, "config": CONFIG, "layers": []}).encode(),  # no schemaVersion
        body(mediaType="text/plain"),
        body(config={"digest": ZERO, "size": 2}),  # no mediaType in the descriptor
    ]
    for raw in lenient:
        parse_manifest(raw, strict=False)
        with pytest.raises(ManifestError):
            parse_manifest(raw, strict=True)


def test_the_content_type_and_the_body_must_agree() -> None:
    with pytest.raises(ManifestError, match="does not match"):
        parse_manifest(body(), DOCKER_MANIFEST)
    assert parse_manifest(body(), f"{OCI_MANIFEST}; charset=utf-8").media_type == OCI_MANIFEST


def test_an_index_by_its_type_or_its_shape() -> None:
    assert is_index({"mediaType": OCI_INDEX})
    assert is_index({"manifests": []}) and not is_index({"manifests": [], "layers": []})
    assert not is_index({"mediaType": OCI_MANIFEST, "manifests": []})
