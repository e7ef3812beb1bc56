"""``redirect``: blob GETs answered with 307 to a presigned storage URL, followed by real clients."""

from __future__ import annotations

import httpx
import pytest

from .helpers import push_index, run_pier
from .images import build_image, build_index
from .layouts import assert_same_layout_content
from .oci import push_blob, sha256
from .skopeo import Skopeo

pytestmark = pytest.mark.backends("filesystem", "s3")


async def test_blob_get_redirects_to_storage_on_s3_and_streams_on_disk(start_registry, backend) -> None:
    server = start_registry("--redirect", "true", "--redirect-expiry", "5m")
    data = b"redirected bytes" * 1000
    async with httpx.AsyncClient(base_url=server.url) as http:
        digest = await push_blob(http, "redirect/repo", data)
        head = await http.head(f"/v2/redirect/repo/blobs/{digest}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        response = await http.get(f"/v2/redirect/repo/blobs/{digest}")
        if backend == "filesystem":  # nothing to redirect to: the registry streams
            assert response.status_code == 200 and response.content == data
            return
        assert response.status_code == 307
        assert response.headers["docker-content-digest"] == digest
        location = response.headers["location"]
        assert location.startswith(server.env["AWS_ENDPOINT_URL"]) and "X-Amz-Signature=" in location
        fetched = await http.get(location)
        assert fetched.content == data and sha256(fetched.content) == digest
        ranged = await http.get(location, headers={"Range": "bytes=16-31"})
        assert ranged.status_code == 206 and ranged.content == data[16:32]
        # Only blobs linked into the repository get a URL: elsewhere it is still unknown.
        assert (await http.get(f"/v2/redirect/other/blobs/{digest}")).status_code == 404


def test_skopeo_and_pier_follow_the_redirect(start_registry, tmp_path, skopeo: Skopeo) -> None:
    server = start_registry("--redirect", "true")
    image = build_image(tmp_path / "image", "v1")
    skopeo.push(image.layout, "v1", "redirect/skopeo", server=server)
    skopeo.pull("redirect/skopeo", "v1", tmp_path / "out", server=server)
    assert_same_layout_content(image.layout, tmp_path / "out", "v1")

    index = build_index(tmp_path / "index", "v1")
    push_index(server.url, "redirect/pier", index)
    result = run_pier(
        tmp_path / "home", "pull", f"{server.host}/redirect/pier:v1", "--platform", "linux/amd64"
    )
    assert result.returncode == 0, result.stderr
    assert f"Digest: {index.digest}" in result.stdout
