"""Tags, catalog and referrers: ordering, pagination with Link, and filtering."""

from __future__ import annotations

import httpx
import pytest

from .oci import descriptor, error_codes, make_image, push_image, push_manifest

pytestmark = pytest.mark.backends("filesystem", "s3")


async def test_tags_are_listed_in_lexical_order_and_paginated(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image()
    await push_image(client, repo, image, "b")
    tags = ["a", "B1", "c", "b", "a2", "z"]
    for tag in tags:
        assert (await push_manifest(client, repo, tag, image.manifest)).status_code == 201
    everything = await client.get(f"/v2/{repo}/tags/list")
    assert everything.json() == {"name": repo, "tags": sorted(tags)}
    assert "link" not in everything.headers

    seen: list[str] = []
    url = f"/v2/{repo}/tags/list?n=2"
    while url:
        page = await client.get(url)
        assert len(page.json()["tags"]) <= 2
        seen += page.json()["tags"]
        link = page.headers.get("link")
        url = link[1 : link.index(">")] if link else ""
    assert seen == sorted(tags)

    after = await client.get(f"/v2/{repo}/tags/list", params={"last": "b", "n": 10})
    assert after.json()["tags"] == [t for t in sorted(tags) if t > "b"]
    bad = await client.get(f"/v2/{repo}/tags/list", params={"n": "-1"})
    assert error_codes(bad) == ["PAGINATION_NUMBER_INVALID"]


async def test_tags_of_unknown_repository(client: httpx.AsyncClient, repo: str) -> None:
    response = await client.get(f"/v2/{repo}/never/tags/list")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


async def test_catalog_lists_every_repository_with_pagination(start_registry) -> None:
    server = start_registry()
    names = ["zeta", "alpha/one", "alpha/two", "beta", "alpha"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        image = make_image(layer_sizes=(10,))
        for name in names:
            await push_image(http, name, image)
        everything = await http.get("/v2/_catalog")
        assert everything.json() == {"repositories": sorted(names)}
        seen: list[str] = []
        url = "/v2/_catalog?n=2"
        while url:
            page = await http.get(url)
            seen += page.json()["repositories"]
            link = page.headers.get("link")
            url = link[1 : link.index(">")] if link else ""
        assert seen == sorted(names)


async def test_referrers(client: httpx.AsyncClient, repo: str) -> None:
    subject = make_image()
    await push_image(client, repo, subject)
    subject_descriptor = descriptor(subject.media_type, subject.manifest)
    signature = make_image(
        layer_sizes=(10,),
        subject=subject_descriptor,
        artifact_type="application/vnd.example.sig",
        annotations={"org.example": "yes"},
    )
    sbom = make_image(layer_sizes=(20,), subject=subject_descriptor, artifact_type="application/spdx+json")

    for artifact in (signature, sbom):
        for blob in artifact.blobs:
            await client.post(
                f"/v2/{repo}/blobs/uploads/", params={"digest": descriptor("", blob)["digest"]}, content=blob
            )
        response = await push_manifest(client, repo, artifact.digest, artifact.manifest)
        assert response.status_code == 201
        assert response.headers["oci-subject"] == subject.digest

    listed = await client.get(f"/v2/{repo}/referrers/{subject.digest}")
    assert listed.status_code == 200
    assert listed.headers["content-type"].startswith("application/vnd.oci.image.index.v1+json")
    index = listed.json()
    assert index["schemaVersion"] == 2
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {signature.digest, sbom.digest}
    assert by_digest[signature.digest]["artifactType"] == "application/vnd.example.sig"
    assert by_digest[signature.digest]["annotations"] == {"org.example": "yes"}
    assert by_digest[sbom.digest]["size"] == len(sbom.manifest)
    assert "oci-filters-applied" not in listed.headers

    filtered = await client.get(
        f"/v2/{repo}/referrers/{subject.digest}", params={"artifactType": "application/spdx+json"}
    )
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in filtered.json()["manifests"]] == [sbom.digest]

    # Deleting a referrer takes it out of the list.
    await client.delete(f"/v2/{repo}/manifests/{sbom.digest}")
    after = await client.get(f"/v2/{repo}/referrers/{subject.digest}")
    assert [m["digest"] for m in after.json()["manifests"]] == [signature.digest]


async def test_referrers_of_unknown_subject_is_an_empty_index(client: httpx.AsyncClient, repo: str) -> None:
    response = await client.get(f"/v2/{repo}/referrers/sha256:{'0' * 64}")
    assert response.status_code == 200
    assert response.json()["manifests"] == []
    bad = await client.get(f"/v2/{repo}/referrers/not-a-digest")
    assert error_codes(bad) == ["DIGEST_INVALID"]
