"""Immutable tags, the audit log and repository delete, on a registry with users (htpasswd)
of whom one, alice, is an admin."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from .auth_users import USERS
from .governance import as_json, audit, backdate_tag, denial, upload
from .helpers import write_htpasswd
from .maintenance import assert_pulls, run_storage_command, stored
from .oci import Image, error_codes, make_image, push_blob, push_image, push_manifest, sha256
from .servers import PierServer

ALICE, BOB = ("alice", USERS["alice"]), ("bob", USERS["bob"])
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def team_args(folder: Path) -> tuple[str, ...]:
    htpasswd = write_htpasswd(folder / "htpasswd", USERS)
    return (
        "--htpasswd",
        str(htpasswd),
        "--admins",
        "alice",
        "--immutable-tags",
        "v*,team-a/*:release-*",
        "--quotas",
        as_json({"namespace": "audited", "limit": 20_000}),
        "--retention",
        as_json({"repositories": "audited/*", "keep_last": 1}),
    )


@pytest.fixture(scope="module")
def team_server(tmp_path_factory, new_storage):
    folder = tmp_path_factory.mktemp("team")
    server = PierServer(folder / "data", *team_args(folder), storage=new_storage(folder / "data")).start()
    yield server
    server.stop()


def client_of(server: PierServer, auth: tuple[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=30, auth=auth)


@pytest.fixture
async def team(team_server) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """alice's and bob's clients."""
    async with client_of(team_server, ALICE) as alice, client_of(team_server, BOB) as bob:
        yield alice, bob


async def push_blobs(client: httpx.AsyncClient, repo: str, *images: Image) -> None:
    for image in images:
        for blob in image.blobs:
            await push_blob(client, repo, blob)


async def test_an_immutable_tag_never_moves(team) -> None:
    _, bob = team
    repo = "team-a/app"
    first, second = make_image(), make_image()
    await push_image(bob, repo, first, "v1")
    await push_blobs(bob, repo, second)

    error = denial(await push_manifest(bob, repo, "v1", second.manifest))
    assert error["message"] == (
        f"tag v1 is immutable (rule *:v*) and points at {first.digest}: push under a new tag"
    )
    assert error["detail"] == {"tag": "v1", "current": first.digest}
    by_digest = await bob.put(
        f"/v2/{repo}/manifests/{second.digest}",
        params={"tag": "v1"},
        content=second.manifest,
        headers={"Content-Type": second.media_type},
    )
    assert "tag v1 is immutable" in denial(by_digest)["message"]
    assert (await push_manifest(bob, repo, "v1", first.manifest)).status_code == 201  # the same: fine
    assert (await bob.get(f"/v2/{repo}/manifests/v1")).content == first.manifest

    # REPOSITORY:TAG rules cover their repositories only; other tags move as always.
    await push_image(bob, repo, first, "release-1")
    assert (
        "rule team-a/*:release-*"
        in denial(await push_manifest(bob, repo, "release-1", second.manifest))["message"]
    )
    for elsewhere, status in (
        ("team-b/app", 201),
        ("team-a/app/deeper", 403),
    ):  # team-a/* covers nested names
        await push_image(bob, elsewhere, first, "release-1")
        await push_blobs(bob, elsewhere, second)
        moved = await push_manifest(bob, elsewhere, "release-1", second.manifest)
        assert moved.status_code == status, moved.text
    await push_image(bob, repo, first, "latest")
    assert (await push_manifest(bob, repo, "latest", second.manifest)).status_code == 201


async def test_concurrent_pushes_to_a_new_immutable_tag_leave_it_on_one_image(team) -> None:
    _, bob = team
    repo = "team-a/race"
    images = [make_image((100,)) for _ in range(16)]
    await push_blobs(bob, repo, *images)
    answers = await asyncio.gather(*(push_manifest(bob, repo, "v2", image.manifest) for image in images))
    statuses = [answer.status_code for answer in answers]
    assert sorted(statuses) == [201] + [403] * 15, statuses
    winner = images[statuses.index(201)]
    assert (await bob.get(f"/v2/{repo}/manifests/v2")).headers["docker-content-digest"] == winner.digest


async def test_an_immutable_tag_is_deleted_only_by_an_admin_who_overrides(team) -> None:
    alice, bob = team
    repo = "team-a/del"
    image = make_image()
    await push_image(bob, repo, image, "v1")
    await push_image(bob, repo, image, "latest")
    hint = "tag v1 is immutable: an admin may delete it with ?override=immutable"
    for client in (bob, alice):
        for reference in ("v1", image.digest):
            assert denial(await client.delete(f"/v2/{repo}/manifests/{reference}"))["message"] == hint
    for reference in ("v1", image.digest):
        refused = await bob.delete(f"/v2/{repo}/manifests/{reference}", params={"override": "immutable"})
        assert denial(refused)["message"] == "tag v1 is immutable: bob is not an admin"
    refused = await bob.delete(f"/v2/{repo}/_pier/repository", params={"override": "immutable"})
    assert "has immutable tags (v1): an admin must override" in denial(refused)["message"]
    assert (await bob.get(f"/v2/{repo}/manifests/v1")).status_code == 200

    assert (await bob.delete(f"/v2/{repo}/manifests/latest")).status_code == 202  # not immutable
    deleted = await alice.delete(f"/v2/{repo}/manifests/{image.digest}", params={"override": "immutable"})
    assert deleted.status_code == 202, deleted.text
    assert (await bob.get(f"/v2/{repo}/manifests/v1")).status_code == 404
    assert (await bob.get(f"/v2/{repo}/tags/list")).json()["tags"] == []

    await push_image(bob, repo, image, "v1")
    dropped = await alice.delete(f"/v2/{repo}/_pier/repository", params={"override": "immutable"})
    assert dropped.status_code == 202, dropped.text
    assert error_codes(await bob.get(f"/v2/{repo}/tags/list")) == ["NAME_UNKNOWN"]


async def test_deleting_a_repository_keeps_nested_ones_and_gc_frees_only_its_blobs(team_server, team) -> None:
    _, bob = team
    repo, nested, sibling = "team-b/gone", "team-b/gone/sub", "team-b/other"
    own, shared, below = make_image(), make_image(), make_image()
    await push_image(bob, repo, own, "latest")
    await push_image(bob, repo, shared, "shared")
    await push_image(bob, sibling, shared, "shared")
    await push_image(bob, nested, below, "latest")

    assert (await bob.delete(f"/v2/{repo}/_pier/repository")).status_code == 202
    assert error_codes(await bob.get(f"/v2/{repo}/tags/list")) == ["NAME_UNKNOWN"]
    assert (await bob.get(f"/v2/{repo}/manifests/{own.digest}")).status_code == 404
    assert (await bob.get(f"/v2/{repo}/blobs/{sha256(own.layers[0])}")).status_code == 404
    catalog = (await bob.get("/v2/_catalog")).json()["repositories"]
    assert repo not in catalog and {nested, sibling} <= set(catalog)
    assert (await bob.get(f"/v2/{nested}/tags/list")).json()["tags"] == ["latest"]
    for missing in (repo, "team-b"):  # gone now; a prefix of names, never a repository
        assert error_codes(await bob.delete(f"/v2/{missing}/_pier/repository")) == ["NAME_UNKNOWN"]

    storage = team_server.storage
    freed = run_storage_command(storage, "gc", "--grace", "0s")
    assert freed.returncode == 0, freed.stderr
    assert not any(stored(storage, sha256(blob)) for blob in (own.manifest, *own.blobs))
    assert all(stored(storage, sha256(blob)) for blob in (shared.manifest, *shared.blobs, below.manifest))
    await assert_pulls(bob, sibling, "shared", shared)
    await assert_pulls(bob, nested, "latest", below)


async def test_the_audit_log_records_who_did_what_and_survives_a_restart(start_registry, tmp_path) -> None:
    args = team_args(tmp_path)
    server = start_registry(*args)
    repo = "audited/app"
    first, second, third, old, new = (make_image((100,)) for _ in range(5))
    big = os.urandom(30_000)
    async with (
        client_of(server, ALICE) as alice,
        client_of(server, BOB) as bob,
        client_of(server) as anonymous,
    ):
        await push_image(bob, repo, first, "latest")
        await push_image(bob, repo, second, "latest")
        await push_image(bob, repo, third, "v1")
        assert (await push_manifest(bob, repo, "v1", second.manifest)).status_code == 403
        assert (await upload(bob, repo, big)).status_code == 403
        wrong = await anonymous.get(f"/v2/{repo}/tags/list", auth=("alice", "not-hers"))
        assert wrong.status_code == 401
        assert (await bob.delete(f"/v2/{repo}/manifests/latest")).status_code == 202
        await push_image(bob, "audited/gone", first, "latest")
        assert (await bob.delete("/v2/audited/gone/_pier/repository")).status_code == 202
        await push_image(bob, repo, old, "old")
        await push_image(bob, repo, new, "new")
        backdate_tag(server.storage, repo, "old", 60)
        assert (await alice.post("/v2/_pier/retention")).status_code == 200

        entries = await audit(alice)
        by_action = {entry["action"]: entry for entry in reversed(entries)}  # the newest of each
        expected = {
            "push": ("bob", repo, "new", new.digest),
            "tag-move": ("bob", repo, "latest", second.digest),
            "immutable-denied": ("bob", repo, "v1", second.digest),
            "quota-denied": ("bob", repo, "", sha256(big)),
            "login-failed": ("alice", repo, "", ""),
            "delete": ("bob", repo, "latest", ""),
            "retention-delete": ("alice", repo, "old", old.digest),
            "delete-repository": ("bob", "audited/gone", "", ""),
        }
        seen = {
            a: (e["user"], e["repository"], e["tag"], e["digest"])
            for a, e in by_action.items()
            if a in expected
        }
        assert seen == expected
        for entry in entries:
            assert entry["addr"] == "127.0.0.1" and TIME.fullmatch(entry["time"]), entry
            assert abs(entry["epoch"] - time.time()) < 600, entry
        assert by_action["tag-move"]["previous"] == first.digest
        assert "quota exceeded: namespace audited" in by_action["quota-denied"]["detail"]
        assert "not-hers" not in json.dumps(entries)

        mine = await audit(alice, repository=repo, user="alice")
        assert {e["action"] for e in mine} == {"login-failed", "retention-delete"}
        pushes = await audit(alice, repository=repo, action="push")
        assert [e["tag"] for e in pushes] == ["new", "old", "v1", "latest"]  # newest first
        assert await audit(alice, repository=repo, action="push", limit="1") == pushes[:1]
        assert await audit(alice, since=str(time.time() + 3600)) == []
        exported = await alice.get("/v2/_pier/audit", params={"repository": repo, "format": "jsonl"})
        assert exported.headers["content-type"].startswith("application/jsonl")
        assert [json.loads(line) for line in exported.text.splitlines()] == await audit(
            alice, repository=repo
        )

        assert error_codes(await bob.get("/v2/_pier/audit")) == ["DENIED"]
        assert (await bob.get("/v2/_pier/audit")).status_code == 403
        assert (await bob.post("/v2/_pier/retention")).status_code == 403
        assert (await anonymous.get("/v2/_pier/audit")).status_code == 401
        assert (await anonymous.get("/v2/_pier/retention")).status_code == 401

    server.stop()
    again = start_registry(*args, root=server.root)
    async with client_of(again, ALICE) as alice, client_of(again, BOB) as bob:
        assert await audit(alice) == entries
        await push_image(bob, repo, first, "after")
        newest = (await audit(alice, limit="1"))[0]
        assert (newest["action"], newest["tag"], newest["user"]) == ("push", "after", "bob")
