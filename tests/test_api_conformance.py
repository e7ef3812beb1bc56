"""Conformance: a manifest reference that is neither a tag nor a digest names nothing.

GET, HEAD and DELETE of it answer 404 MANIFEST_UNKNOWN, as distribution and zot do and as
the released distribution-spec v1.1.1 conformance suite expects (it asks for
``.INVALID_MANIFEST_NAME``); a PUT under it is still refused with 400 TAG_INVALID.
"""

from __future__ import annotations

import httpx
import pytest

from .oci import error_codes, make_image, push_image, push_manifest

pytestmark = pytest.mark.backends("filesystem", "s3")

NOT_REFERENCES = [
    ".INVALID_MANIFEST_NAME",  # the suite's "nonexistent manifest"
    "-bad-",
    "a" * 200,  # longer than a tag may be
    "sha256:totallywrong",  # digest-shaped, not a digest
    "sha384:" + "a" * 96,  # an algorithm pier does not verify: nothing can be stored under it
]


@pytest.mark.parametrize("reference", NOT_REFERENCES, ids=["suite", "dashes", "long", "bad-hex", "sha384"])
async def test_reading_or_deleting_a_non_reference_is_manifest_unknown(
    client: httpx.AsyncClient, repo: str, reference: str
) -> None:
    await push_image(client, repo, make_image(layer_sizes=(10,)))  # the repository exists
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 404, (method, response.text)
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    head = await client.head(f"/v2/{repo}/manifests/{reference}")
    assert head.status_code == 404 and head.content == b""
    missing_repo = await client.get(f"/v2/{repo}-none/manifests/{reference}")
    assert missing_repo.status_code == 404


async def test_writing_under_an_invalid_tag_is_still_tag_invalid(
    client: httpx.AsyncClient, repo: str
) -> None:
    image = make_image(layer_sizes=(10,))
    await push_image(client, repo, image)
    for tag in ("-bad-", "a" * 200, ".INVALID_MANIFEST_NAME"):
        response = await push_manifest(client, repo, tag, image.manifest)
        assert response.status_code == 400 and error_codes(response) == ["TAG_INVALID"], tag
    assert (await client.get(f"/v2/{repo}/tags/list")).json()["tags"] == ["latest"]


async def test_valid_references_still_resolve(client: httpx.AsyncClient, repo: str) -> None:
    image = make_image(layer_sizes=(10,))
    await push_image(client, repo, image, tag="a" * 128)  # the longest tag there is
    assert (await client.get(f"/v2/{repo}/manifests/{'a' * 128}")).status_code == 200
    assert (await client.head(f"/v2/{repo}/manifests/{image.digest}")).status_code == 200
    unknown = await client.get(f"/v2/{repo}/manifests/sha256:{'0' * 64}")
    assert unknown.status_code == 404 and error_codes(unknown) == ["MANIFEST_UNKNOWN"]


async def test_a_mirror_answers_the_same_without_asking_upstream(start_registry) -> None:
    # The upstream is a closed port: a request that reached it would fail as unavailable.
    server = start_registry("--proxy", "hub=http://127.0.0.1:9")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.get("/v2/hub/library/busybox/manifests/-bad-")
    assert response.status_code == 404 and error_codes(response) == ["MANIFEST_UNKNOWN"]
