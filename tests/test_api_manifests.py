"""Manifests: every supported media type, validation, negotiation, tags by digest, deletes."""

from __future__ import annotations

import json

import httpx
import pytest

from .oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    error_codes,
    make_image,
    make_index,
    push_blob,
    push_image,
    push_manifest,
    sha256,
)

pytestmark = pytest.mark.backends("filesystem", "s3")


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
async def test_image_manifest_round_trip(client: httpx.AsyncClient, repo: str, media_type: str) -> None:
    image = make_image(media_type=media_type)
    for blob in image.blobs:
        await push_blob(client, repo, blob)
    put = await push_manifest(client, repo, "v1", image.manifest, media_type)
    assert put.status_code == 201
    assert put.headers["docker-content-digest"] == image.digest
    assert put.headers["location"] == f"/v2/{repo}/manifests/{image.digest}"

    for reference in ("v1", image.digest):
        got = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_type})
        assert got.status_code == 200
        assert got.content == image.manifest
        assert got.headers["content-type"] == media_type
        assert got.headers["docker-content-digest"] == image.digest
        head = await client.head(f"/v2/{repo}/manifests/{reference}")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(image.manifest))
        assert head.headers["docker-content-digest"] == image.digest
        assert head.headers["content-type"] == media_type


@pytest.mark.parametrize(
    ("index_type", "child_type"), [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)]
)
async def test_index_round_trip(
    client: httpx.AsyncClient, repo: str, index_type: str, child_type: str
) -> None:
    children = [make_image(media_type=child_type) for _ in range(2)]
    for child in children:
        await push_image(client, repo, child, tag=f"child-{child.digest[7:15]}")
    index = make_index(children, index_type)
    put = await push_manifest(client, repo, "multi", index, index_type)
    assert put.status_code == 201, put.text
    got = await client.get(f"/v2/{repo}/manifests/multi")
    assert got.content == index
    assert got.headers["content-type"] == index_type


async def test_index_with_unknown_child_is_refused(client: httpx.AsyncClient, repo: str) -> None:
    orphan = make_image()
    response = await push_manifest(client, repo, "broken", make_index([orphan]), OCI_INDEX)
    assert response.status_code == 400
    # distribution-spec: a manifest rejected for a missing reference MUST get MANIFEST_BLOB_UNKNOWN.
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_manifest_with_missing_blob_is_refused(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image()
    await push_blob(client, repo, image.config)  # the layers are never pushed
    response = await push_manifest(client, repo, "v1", image.manifest)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert (await client.get(f"/v2/{repo}/manifests/v1")).status_code == 404


async def test_manifest_with_wrong_blob_size_is_refused(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image(layer_sizes=(100,))
    for blob in image.blobs:
        await push_blob(client, repo, blob)
    document = json.loads(image.manifest)
    document["layers"][0]["size"] = 99
    response = await push_manifest(client, repo, "v1", json.dumps(document).encode())
    assert error_codes(response) == ["MANIFEST_INVALID"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion": 1}',
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": "sha256:short", "size": 1},
            }
        ).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": sha256(b""), "size": -1},
            }
        ).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["garbage", "array", "schema1", "no-config", "bad-digest", "negative-size", "deep-nesting"],
)
async def test_invalid_manifests(client: httpx.AsyncClient, repo: str, body: bytes) -> None:
    response = await push_manifest(client, repo, "bad", body)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


async def test_media_type_mismatch_and_unknown_type(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image()
    for blob in image.blobs:
        await push_blob(client, repo, blob)
    mismatch = await push_manifest(client, repo, "v1", image.manifest, DOCKER_MANIFEST)
    assert error_codes(mismatch) == ["MANIFEST_INVALID"]
    unknown = await push_manifest(
        client, repo, "v1", image.manifest.replace(OCI_MANIFEST.encode(), b"text/plain"), "text/plain"
    )
    assert error_codes(unknown) == ["MANIFEST_INVALID"]


async def test_oversized_manifest_is_413(client: httpx.AsyncClient, repo: str) -> None:
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    response = await push_manifest(client, repo, "huge", body)
    assert response.status_code == 413
    assert error_codes(response) == ["MANIFEST_INVALID"]


async def test_put_by_digest_must_match_body(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image()
    for blob in image.blobs:
        await push_blob(client, repo, blob)
    wrong = await push_manifest(client, repo, sha256(b"something else"), image.manifest)
    assert wrong.status_code == 400
    assert error_codes(wrong) == ["DIGEST_INVALID"]
    right = await push_manifest(client, repo, image.digest, image.manifest)
    assert right.status_code == 201
    # Pushed by digest only: no tag was created.
    assert (await client.get(f"/v2/{repo}/tags/list")).json()["tags"] == []


async def test_put_by_digest_with_tag_parameters(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image()
    for blob in image.blobs:
        await push_blob(client, repo, blob)
    response = await client.put(
        f"/v2/{repo}/manifests/{image.digest}",
        params=[("tag", "one"), ("tag", "two")],
        content=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201
    assert sorted(response.headers.get_list("oci-tag")) == ["one", "two"]
    assert (await client.get(f"/v2/{repo}/tags/list")).json()["tags"] == ["one", "two"]
    bad = await client.put(
        f"/v2/{repo}/manifests/{image.digest}",
        params={"tag": "bad/tag"},
        content=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert error_codes(bad) == ["TAG_INVALID"]


async def test_accept_negotiation(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image(media_type=DOCKER_MANIFEST)
    await push_image(client, repo, image)
    url = f"/v2/{repo}/manifests/latest"
    both = await client.get(url, headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"})
    assert both.headers["content-type"] == DOCKER_MANIFEST
    wildcard = await client.get(url, headers={"Accept": "*/*"})
    assert wildcard.status_code == 200
    refused = await client.get(url, headers={"Accept": OCI_MANIFEST})
    assert refused.status_code == 404
    assert error_codes(refused) == ["MANIFEST_UNKNOWN"]


async def test_tag_moves_to_the_latest_push(client: httpx.AsyncClient, repo: str) -> None:
    first, second = make_image(), make_image()
    await push_image(client, repo, first, "moving")
    await push_image(client, repo, second, "moving")
    got = await client.get(f"/v2/{repo}/manifests/moving")
    assert got.headers["docker-content-digest"] == second.digest
    # The old manifest is still there by digest.
    assert (await client.get(f"/v2/{repo}/manifests/{first.digest}")).status_code == 200


async def test_unknown_manifest(client: httpx.AsyncClient, repo: str) -> None:
    for reference in ("nope", sha256(b"nope")):
        response = await client.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 404
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]


async def test_delete_tag_keeps_manifest(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image()
    await push_image(client, repo, image, "a")
    await push_manifest(client, repo, "b", image.manifest)
    assert (await client.delete(f"/v2/{repo}/manifests/a")).status_code == 202
    assert (await client.get(f"/v2/{repo}/manifests/a")).status_code == 404
    assert (await client.get(f"/v2/{repo}/manifests/b")).status_code == 200
    assert (await client.get(f"/v2/{repo}/manifests/{image.digest}")).status_code == 200


async def test_delete_by_digest_removes_manifest_and_its_tags(client: httpx.AsyncClient, repo: str) -> None:
    image, other = make_image(), make_image()
    await push_image(client, repo, image, "a")
    await push_manifest(client, repo, "b", image.manifest)
    await push_image(client, repo, other, "c")
    assert (await client.delete(f"/v2/{repo}/manifests/{image.digest}")).status_code == 202
    for reference in ("a", "b", image.digest):
        assert (await client.get(f"/v2/{repo}/manifests/{reference}")).status_code == 404
    assert (await client.get(f"/v2/{repo}/tags/list")).json()["tags"] == ["c"]
    again = await client.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert again.status_code == 404


async def test_deletes_can_be_disabled(start_registry) -> None:
    server = start_registry("--delete-enabled", "false")
    async with httpx.AsyncClient(base_url=server.url) as http:
        image = make_image()
        await push_image(http, "nodelete/repo", image)
        for url in (
            f"/v2/nodelete/repo/manifests/{image.digest}",
            f"/v2/nodelete/repo/blobs/{sha256(image.config)}",
        ):
            response = await http.delete(url)
            assert response.status_code == 405
            assert error_codes(response) == ["UNSUPPORTED"]
        assert (await http.get("/v2/nodelete/repo/manifests/latest")).status_code == 200
