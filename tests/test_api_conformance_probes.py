"""The OCI distribution-spec conformance suite's checks, replayed over HTTP against pier.

Each test is one check (or one edge case next to it) of the Go suite in
opencontainers/distribution-spec ``conformance/`` (v1.1 line: Pull, Push, Content
Discovery, Content Management), asserting the status and error codes of spec.md, so a
regression shows here without building the Go suite.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

import httpx
import pytest

from .oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, error_codes, push_blob, push_manifest, sha256

pytestmark = pytest.mark.backends("filesystem", "s3")

EMPTY_JSON = "application/vnd.oci.empty.v1+json"
EMPTY_DESCRIPTOR = {"mediaType": EMPTY_JSON, "digest": sha256(b"{}"), "size": 2}
SPEC_ERROR_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
}


def desc(media_type: str, content: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": sha256(content), "size": len(content), **extra}


def suite_config() -> bytes:
    """A config like the suite's: unique by a random author, so each test has its own digest."""
    document = {
        "author": os.urandom(8).hex(),
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    return json.dumps(document, indent="\t").encode()


def manifest_doc(config: dict, layers: list[dict], **extra: object) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers, **extra}
    ).encode()


async def push_image(client: httpx.AsyncClient, repo: str, reference: str) -> tuple[str, bytes]:
    """The suite's test image: its config descriptor carries ``data`` and an unknown field."""
    config, layer = suite_config(), os.urandom(64)
    for blob in (config, layer):
        await push_blob(client, repo, blob)
    extra = {"data": base64.b64encode(config).decode(), "newUnspecifiedField": "aGVsbG8gd29ybGQ="}
    body = manifest_doc(desc(OCI_CONFIG, config, **extra), [desc(OCI_LAYER, layer)])
    response = await push_manifest(client, repo, reference, body)
    assert response.status_code == 201, response.text
    return sha256(body), body


# -- Pull: references that are neither a tag nor a digest ----------------------------------


# ".INVALID_MANIFEST_NAME" is the suite's nonexistent manifest; "<ref>" is what its
# teardown really sends (a placeholder its HTTP client does not substitute).
@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "<ref>", "-lead", "a" * 129])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_manifest_reference_in_no_valid_format_is_unknown(
    client: httpx.AsyncClient, repo: str, method: str, reference: str
) -> None:
    """spec.md, Pulling manifests: a reference is a tag or a digest; what is not found is 404."""
    await push_image(client, repo, "present")  # the repository exists: only the reference is at fault
    response = await client.request(method, f"/v2/{repo}/manifests/{reference}")
    assert response.status_code == 404, response.text
    if method == "GET":
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]


async def test_manifest_malformed_digest_is_400_or_404(client: httpx.AsyncClient, repo: str) -> None:
    """The suite's error-code check: 400 with a spec error code, or 404 MANIFEST_UNKNOWN."""
    await push_image(client, repo, "present")
    response = await client.get(f"/v2/{repo}/manifests/sha256:totallywrong")
    assert response.status_code in (400, 404)
    expected = ["DIGEST_INVALID"] if response.status_code == 400 else ["MANIFEST_UNKNOWN"]
    assert error_codes(response) == expected
    assert (
        await client.head(f"/v2/{repo}/manifests/sha256:totallywrong")
    ).status_code == response.status_code


async def test_manifest_unknown_tag_and_digest_are_404(client: httpx.AsyncClient, repo: str) -> None:
    await push_image(client, repo, "present")
    for reference in ("absent", sha256(b"absent")):
        got = await client.get(f"/v2/{repo}/manifests/{reference}")
        assert got.status_code == 404
        assert error_codes(got) == ["MANIFEST_UNKNOWN"]
        assert (await client.head(f"/v2/{repo}/manifests/{reference}")).status_code == 404


async def test_pull_by_tag_and_digest_with_headers(client: httpx.AsyncClient, repo: str) -> None:
    """Manifest with a descriptor ``data`` field and an unknown field: stored and served byte for byte."""
    digest, body = await push_image(client, repo, "tagtest0")
    for reference in ("tagtest0", digest):
        got = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200
        assert got.content == body
        assert got.headers["docker-content-digest"] == digest
        head = await client.head(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert head.status_code == 200
        assert head.headers["docker-content-digest"] == digest


async def test_blob_head_and_get(client: httpx.AsyncClient, repo: str) -> None:
    blob = await push_blob(client, repo, b"NBA Jam on my NBA toast")
    head = await client.head(f"/v2/{repo}/blobs/{blob}")
    assert head.status_code == 200
    assert head.headers["docker-content-digest"] == blob
    assert head.headers["content-length"] == "23"
    assert (await client.get(f"/v2/{repo}/blobs/{blob}")).content == b"NBA Jam on my NBA toast"
    missing = sha256(b"hello world")
    assert (await client.head(f"/v2/{repo}/blobs/{missing}")).status_code == 404
    got = await client.get(f"/v2/{repo}/blobs/{missing}")
    assert got.status_code == 404
    assert error_codes(got) == ["BLOB_UNKNOWN"]


# -- Push: streamed, monolithic and chunked uploads ----------------------------------------


async def test_streamed_upload_then_put_without_body(client: httpx.AsyncClient, repo: str) -> None:
    data = os.urandom(42)
    started = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202
    patched = await client.patch(
        started.headers["location"], content=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert patched.status_code == 202
    assert patched.headers["range"] == f"0-{len(data) - 1}"
    done = await client.put(
        patched.headers["location"], params={"digest": sha256(data)}, headers={"Content-Length": "0"}
    )
    assert done.status_code == 201, done.text
    assert done.headers["location"] == f"/v2/{repo}/blobs/{sha256(data)}"


async def test_chunked_upload_ranges_and_recovery(client: httpx.AsyncClient, repo: str) -> None:
    """The suite's chunked workflow: 416 for a gap or a replayed chunk, 204 status with Range."""
    data = os.urandom(42)
    first, second = data[:22], data[22:]
    gap = await client.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    out_of_order = await client.patch(
        gap.headers["location"], content=second, headers={"Content-Range": f"22-{len(data) - 1}"}
    )
    assert out_of_order.status_code == 416
    assert error_codes(out_of_order) == ["BLOB_UPLOAD_INVALID"]

    started = await client.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert started.status_code == 202
    stale = started.headers["location"]
    patched = await client.patch(stale, content=first, headers={"Content-Range": "0-21"})
    assert patched.status_code == 202
    assert patched.headers["range"] == "0-21"
    replay = await client.patch(stale, content=first, headers={"Content-Range": "0-21"})
    assert replay.status_code == 416
    status = await client.get(stale)
    assert status.status_code == 204
    assert status.headers["range"] == "0-21"
    assert status.headers["location"]
    second_patch = await client.patch(
        status.headers["location"], content=second, headers={"Content-Range": f"22-{len(data) - 1}"}
    )
    assert second_patch.status_code == 202
    assert second_patch.headers["location"]
    done = await client.put(second_patch.headers["location"], params={"digest": sha256(data)})
    assert done.status_code == 201
    assert (await client.get(f"/v2/{repo}/blobs/{sha256(data)}")).content == data


async def test_monolithic_post_with_digest(client: httpx.AsyncClient, repo: str) -> None:
    """POST with ``digest`` and a body: 201 (done) or 202 (a session); GET agrees with which."""
    data = suite_config()
    posted = await client.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": sha256(data)},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert posted.status_code in (201, 202)
    assert posted.headers["location"]
    expected = 200 if posted.status_code == 201 else 404
    assert (await client.get(f"/v2/{repo}/blobs/{sha256(data)}")).status_code == expected


# -- Push: cross-repository mount ----------------------------------------------------------


async def test_mount_without_from_falls_back_to_an_upload_session(
    client: httpx.AsyncClient, repo: str
) -> None:
    """spec.md: a registry that does not mount MUST answer 202 with an upload session."""
    for digest in (sha256(b"hello world"), await push_blob(client, f"{repo}/source", os.urandom(42))):
        response = await client.post(f"/v2/{repo}/mirror/blobs/uploads/", params={"mount": digest})
        assert response.status_code == 202
        assert response.headers["location"].startswith(f"/v2/{repo}/mirror/blobs/uploads/")


async def test_mount_with_from(client: httpx.AsyncClient, repo: str) -> None:
    digest = await push_blob(client, f"{repo}/source", os.urandom(42))
    mounted = await client.post(
        f"/v2/{repo}/mirror/blobs/uploads/", params={"mount": digest, "from": f"{repo}/source"}
    )
    assert mounted.status_code == 201
    assert mounted.headers["location"] == f"/v2/{repo}/mirror/blobs/{digest}"
    assert (await client.get(mounted.headers["location"])).status_code == 200
    missing = await client.post(
        f"/v2/{repo}/mirror/blobs/uploads/", params={"mount": sha256(b"nothing"), "from": f"{repo}/source"}
    )
    assert missing.status_code == 202
    assert missing.headers["location"].startswith(f"/v2/{repo}/mirror/blobs/uploads/")


async def test_manifest_without_layers_is_accepted(client: httpx.AsyncClient, repo: str) -> None:
    """The suite's empty-layer manifest: no top-level mediaType and ``layers: []``."""
    config = suite_config()
    await push_blob(client, repo, config)
    body = json.dumps(
        {"schemaVersion": 2, "config": desc(OCI_CONFIG, config), "layers": []}, indent="\t"
    ).encode()
    response = await push_manifest(client, repo, "emptylayer", body)
    assert response.status_code == 201, response.text
    assert response.headers["location"]
    assert (await client.get(f"/v2/{repo}/manifests/emptylayer")).content == body


# -- Content discovery: tags and referrers -------------------------------------------------


async def test_tag_listing_order_n_and_last(client: httpx.AsyncClient, repo: str) -> None:
    _, body = await push_image(client, repo, "test0")
    for tag in ("TEST0", "test1", "TEST1", "test2", "TEST2", "test3", "TEST3"):
        assert (await push_manifest(client, repo, tag, body)).status_code == 201
    tags = (await client.get(f"/v2/{repo}/tags/list")).json()["tags"]
    assert tags == sorted(tags)
    page = (await client.get(f"/v2/{repo}/tags/list", params={"n": 4})).json()["tags"]
    assert page == tags[:4]
    rest = (await client.get(f"/v2/{repo}/tags/list", params={"n": 4, "last": page[-1]})).json()["tags"]
    assert rest == tags[4:8]


async def push_referrers(client: httpx.AsyncClient, repo: str, subject: dict) -> dict[str, str]:
    """The suite's five referrers of one subject; returns digest -> annotation."""
    blob_a, blob_b = b"NHL Peanut Butter on my NHL bagel", b"NBA Strawberry Jam on my NBA croissant"
    type_a, type_b = "application/vnd.nhl.peanut.butter.bagel", "application/vnd.nba.strawberry.jam.croissant"
    for blob in (b"{}", blob_a, blob_b):
        await push_blob(client, repo, blob)
    key = "org.opencontainers.conformance.test"
    bodies = {
        "config a": manifest_doc(desc(type_a, blob_a), [EMPTY_DESCRIPTOR], subject=subject),
        "layer a": manifest_doc(
            EMPTY_DESCRIPTOR, [desc(type_a, blob_a)], subject=subject, artifactType=type_a
        ),
        "config b": manifest_doc(desc(type_b, blob_b), [EMPTY_DESCRIPTOR], subject=subject),
        "layer b": manifest_doc(
            EMPTY_DESCRIPTOR, [desc(type_b, blob_b)], subject=subject, artifactType=type_b
        ),
    }
    notes: dict[str, str] = {}
    for note, body in bodies.items():
        document = json.loads(body)
        document["annotations"] = {key: f"test {note}"}
        raw = json.dumps(document).encode()
        put = await push_manifest(client, repo, sha256(raw), raw)
        assert put.status_code == 201, put.text
        assert put.headers["oci-subject"] == subject["digest"]  # MUST, where referrers are supported
        notes[sha256(raw)] = f"test {note}"
    children = [
        desc(OCI_MANIFEST, (await client.get(f"/v2/{repo}/manifests/{d}")).content) for d in list(notes)[:2]
    ]
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.food.stand",
            "manifests": children,
            "subject": subject,
            "annotations": {key: "test index"},
        }
    ).encode()
    assert (await push_manifest(client, repo, sha256(index), index, OCI_INDEX)).status_code == 201
    notes[sha256(index)] = "test index"
    return notes


async def test_referrers_listing_filter_and_content_type(client: httpx.AsyncClient, repo: str) -> None:
    subject_digest, subject_body = await push_image(client, repo, "tagtest0")
    notes = await push_referrers(client, repo, desc(OCI_MANIFEST, subject_body))
    listed = await client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert listed.status_code == 200
    assert listed.headers["content-type"] == OCI_INDEX
    manifests = listed.json()["manifests"]
    assert {m["digest"]: m["annotations"]["org.opencontainers.conformance.test"] for m in manifests} == notes
    types = {m["digest"]: m.get("artifactType") for m in manifests}
    assert sorted(types.values()) == sorted(
        ["application/vnd.nhl.peanut.butter.bagel"] * 2
        + ["application/vnd.nba.strawberry.jam.croissant"] * 2
        + ["application/vnd.food.stand"]
    )

    filtered = await client.get(
        f"/v2/{repo}/referrers/{subject_digest}",
        params={"artifactType": "application/vnd.nhl.peanut.butter.bagel"},
    )
    assert filtered.status_code == 200
    assert filtered.headers["content-type"] == OCI_INDEX
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert len(filtered.json()["manifests"]) == 2


async def test_referrers_of_a_subject_never_pushed(client: httpx.AsyncClient, repo: str) -> None:
    """A referrer may be pushed before its subject: it is listed, and the listing is an index."""
    absent = manifest_doc(desc(OCI_CONFIG, b"nope"), [])
    await push_blob(client, repo, b"{}")
    referrer = manifest_doc(
        EMPTY_DESCRIPTOR, [EMPTY_DESCRIPTOR], subject=desc(OCI_MANIFEST, absent), artifactType="x/y"
    )
    put = await push_manifest(client, repo, sha256(referrer), referrer)
    assert put.status_code == 201, put.text
    assert put.headers["oci-subject"] == sha256(absent)
    listed = await client.get(f"/v2/{repo}/referrers/{sha256(absent)}")
    assert listed.status_code == 200
    assert listed.headers["content-type"] == OCI_INDEX
    assert [m["digest"] for m in listed.json()["manifests"]] == [sha256(referrer)]
    nothing = await client.get(f"/v2/{repo}/referrers/{sha256(b'hello world')}")
    assert nothing.status_code == 200
    assert nothing.headers["content-type"] == OCI_INDEX
    assert nothing.json()["manifests"] == []


# -- Content management: deletes -----------------------------------------------------------


async def test_delete_tag_manifest_and_blob(client: httpx.AsyncClient, repo: str) -> None:
    digest, body = await push_image(client, repo, "tagtest0")
    assert (await push_manifest(client, repo, "other", body)).status_code == 201
    before = len((await client.get(f"/v2/{repo}/tags/list")).json()["tags"])

    untagged = await client.delete(f"/v2/{repo}/manifests/tagtest0")
    assert untagged.status_code == 202
    assert len((await client.get(f"/v2/{repo}/tags/list")).json()["tags"]) < before
    assert (
        await client.get(f"/v2/{repo}/manifests/{digest}")
    ).status_code == 200  # a tag delete keeps the manifest

    assert (await client.delete(f"/v2/{repo}/manifests/{digest}")).status_code == 202
    gone = await client.get(f"/v2/{repo}/manifests/{digest}")
    assert gone.status_code == 404
    assert error_codes(gone) == ["MANIFEST_UNKNOWN"]
    again = await client.delete(f"/v2/{repo}/manifests/{digest}")
    assert again.status_code == 404
    assert error_codes(again) == ["MANIFEST_UNKNOWN"]

    config = json.loads(body)["config"]["digest"]
    assert (await client.delete(f"/v2/{repo}/blobs/{config}")).status_code == 202
    deleted = await client.get(f"/v2/{repo}/blobs/{config}")
    assert deleted.status_code == 404
    assert error_codes(deleted) == ["BLOB_UNKNOWN"]


async def test_error_bodies_use_spec_codes(client: httpx.AsyncClient, repo: str) -> None:
    """The suite's error-code check: a 4xx body is ``{"errors": [...]}`` with the spec's codes."""
    await push_image(client, repo, "present")
    for method, path in (
        ("GET", f"/v2/{repo}/manifests/sha256:totallywrong"),
        ("PUT", f"/v2/{repo}/manifests/bad"),
        ("GET", f"/v2/{repo}/blobs/sha256:{'0' * 64}"),
        ("DELETE", f"/v2/{repo}/blobs/not-a-digest"),
    ):
        response = await client.request(
            method, path, content=b"blablabla", headers={"Content-Type": OCI_MANIFEST}
        )
        assert 400 <= response.status_code < 500
        codes = error_codes(response)
        assert codes and set(codes) <= SPEC_ERROR_CODES, (method, path, codes)


# -- The main-branch suite's additions: ranges, digests, cancel, data shapes ---------------


async def test_blob_range_requests(client: httpx.AsyncClient, repo: str) -> None:
    """206 with Content-Range for satisfiable ranges, 416 past the end; an invalid range may be ignored."""
    data = os.urandom(2048)
    digest = await push_blob(client, repo, data)
    for header, first, last in (
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, 2047),
        ("bytes=-500", 1548, 2047),
    ):
        got = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
        assert got.status_code == 206, header
        assert got.content == data[first : last + 1]
        assert got.headers["content-length"] == str(last - first + 1)
        assert got.headers["content-range"] == f"bytes {first}-{last}/2048"
    clipped = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=2000-5000"})
    assert clipped.status_code == 206
    assert clipped.content == data[2000:]
    beyond = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=5000-10000"})
    assert beyond.status_code == 416
    backwards = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=500-0"})
    assert (backwards.status_code, backwards.content) in ((200, data), (416, backwards.content))


async def test_empty_blob_round_trip(client: httpx.AsyncClient, repo: str) -> None:
    empty = sha256(b"")
    for started in (
        await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": empty}, content=b""),
        await client.put(
            (await client.post(f"/v2/{repo}/blobs/uploads/")).headers["location"], params={"digest": empty}
        ),
    ):
        assert started.status_code == 201, started.text
    head = await client.head(f"/v2/{repo}/blobs/{empty}")
    assert head.status_code == 200
    assert head.headers["content-length"] == "0"
    got = await client.get(f"/v2/{repo}/blobs/{empty}")
    assert (got.status_code, got.content, got.headers["content-length"]) == (200, b"", "0")


async def test_sha512_blobs_and_manifests(client: httpx.AsyncClient, repo: str) -> None:
    """Non-canonical algorithms: sha512 blobs and a manifest pushed by its sha512 digest."""

    def sha512(data: bytes) -> str:
        return "sha512:" + hashlib.sha512(data).hexdigest()

    config, layer = suite_config(), os.urandom(512)
    for blob in (config, layer):
        posted = await client.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": sha512(blob)}, content=blob
        )
        assert posted.status_code == 201, posted.text
        assert posted.headers["location"] == f"/v2/{repo}/blobs/{sha512(blob)}"
        head = await client.head(f"/v2/{repo}/blobs/{sha512(blob)}")
        assert head.headers.get("docker-content-digest", sha512(blob)) == sha512(blob)
        assert (await client.get(f"/v2/{repo}/blobs/{sha512(blob)}")).content == blob
    body = manifest_doc(
        {"mediaType": OCI_CONFIG, "digest": sha512(config), "size": len(config)},
        [{"mediaType": OCI_LAYER, "digest": sha512(layer), "size": len(layer)}],
    )
    put = await push_manifest(client, repo, sha512(body), body)
    assert put.status_code == 201, put.text
    got = await client.get(f"/v2/{repo}/manifests/{sha512(body)}")
    assert got.content == body
    assert got.headers.get("docker-content-digest", sha512(body)) == sha512(body)


@pytest.mark.parametrize("style", ["post", "post-put", "chunked", "chunked-put", "stream"])
async def test_every_upload_style_refuses_a_wrong_digest(
    client: httpx.AsyncClient, repo: str, style: str
) -> None:
    """The suite's bad-digest uploads: the content gains five bytes after its digest was taken."""
    data = os.urandom(3067)
    digest, sent = sha256(data), data + b"oh no"
    if style == "post":
        done = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=sent)
    else:
        location = (await client.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})).headers[
            "location"
        ]
        if style == "post-put":
            done = await client.put(location, params={"digest": digest}, content=sent)
        elif style == "stream":
            location = (await client.patch(location, content=sent)).headers["location"]
            done = await client.put(location, params={"digest": digest})
        else:
            head, tail = sent[:1024], sent[1024:]
            patched = await client.patch(location, content=head, headers={"Content-Range": "0-1023"})
            assert patched.status_code == 202
            rest = {"Content-Range": f"1024-{len(sent) - 1}"}
            if style == "chunked-put":
                done = await client.put(
                    patched.headers["location"], params={"digest": digest}, content=tail, headers=rest
                )
            else:
                location = (
                    await client.patch(patched.headers["location"], content=tail, headers=rest)
                ).headers["location"]
                done = await client.put(location, params={"digest": digest})
    assert done.status_code == 400, done.text
    assert error_codes(done) == ["DIGEST_INVALID"]
    assert (await client.head(f"/v2/{repo}/blobs/{digest}")).status_code == 404


async def test_cancelled_upload_is_gone(client: httpx.AsyncClient, repo: str) -> None:
    location = (await client.post(f"/v2/{repo}/blobs/uploads/")).headers["location"]
    assert (await client.delete(location)).status_code == 204
    after = await client.get(location)
    assert after.status_code == 404
    assert error_codes(after) == ["BLOB_UPLOAD_UNKNOWN"]


async def test_manifest_put_with_a_wrong_digest(client: httpx.AsyncClient, repo: str) -> None:
    """By a malformed digest, or by a digest the body (two spaces longer) does not have: 400."""
    _, body = await push_image(client, repo, "base")
    malformed = await push_manifest(client, repo, "sha256:baddigeststring", body)
    assert malformed.status_code == 400
    assert error_codes(malformed) == ["DIGEST_INVALID"]
    mismatched = await push_manifest(client, repo, sha256(body), body + b"  ")
    assert mismatched.status_code == 400
    assert error_codes(mismatched) == ["DIGEST_INVALID"]
    assert (await client.get(f"/v2/{repo}/manifests/sha256:baddigeststring")).status_code in (400, 404)


async def test_manifest_push_with_tag_parameters(client: httpx.AsyncClient, repo: str) -> None:
    """PUT by digest with ``?tag=`` (spec 1.1+dev): 201, OCI-Tag names each tag, each resolves."""
    digest, body = await push_image(client, repo, "first")
    put = await client.put(
        f"/v2/{repo}/manifests/{digest}",
        params=[("tag", "p-0"), ("tag", "p-1")],
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    announced = {tag.strip() for value in put.headers.get_list("oci-tag") for tag in value.split(",")}
    assert announced == {"p-0", "p-1"}
    for tag in ("p-0", "p-1"):
        assert (await client.get(f"/v2/{repo}/manifests/{tag}")).content == body


async def test_data_shapes_the_suite_pushes(client: httpx.AsyncClient, repo: str) -> None:
    """A ~3.9 MB manifest, an empty index, and non-distributable layers that were never pushed."""
    config, layer = suite_config(), os.urandom(64)
    for blob in (config, layer):
        await push_blob(client, repo, blob)
    notes = {f"large-annotation-{i}": "A" * 10000 for i in range(390)}
    large = manifest_doc(desc(OCI_CONFIG, config), [desc(OCI_LAYER, layer)], annotations=notes)
    assert (await push_manifest(client, repo, "large-manifest", large)).status_code == 201
    assert (await client.get(f"/v2/{repo}/manifests/large-manifest")).content == large

    empty_index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert (await push_manifest(client, repo, "index", empty_index, OCI_INDEX)).status_code == 201

    foreign = [
        desc(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            os.urandom(256),
            urls=["https://store.example.com/a"],
        ),
        desc(
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            os.urandom(256),
            urls=["https://store.example.com/b"],
        ),
        desc(OCI_LAYER, layer),
    ]
    nondistributable = manifest_doc(desc(OCI_CONFIG, config), foreign)
    put = await push_manifest(client, repo, "non-distributable-image", nondistributable)
    assert put.status_code == 201, put.text


async def test_tag_delete_is_immediate_and_unknown_repository_lists_nothing(
    client: httpx.AsyncClient, repo: str
) -> None:
    await push_image(client, repo, "gone")
    assert (await client.delete(f"/v2/{repo}/manifests/gone")).status_code == 202
    assert (await client.head(f"/v2/{repo}/manifests/gone")).status_code == 404
    never = await client.get(f"/v2/{repo}-never/tags/list")
    assert never.status_code in (200, 404)
    if never.status_code == 404:
        assert error_codes(never) == ["NAME_UNKNOWN"]
    else:
        assert never.json()["tags"] in ([], None)
