"""Retention: the dry run lists exactly what the run deletes; the newest tags, protected and
immutable tags, recently pulled tags and what they reach stay; ``pier gc`` then frees the bytes.

Tags are aged by setting their link files' times on the filesystem store, not by waiting.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from .governance import as_json, audit, backdate_manifest, backdate_tag, image_of
from .helpers import wait_until, wait_until_async
from .maintenance import assert_pulls, run_storage_command, stored
from .oci import OCI_INDEX, Image, descriptor, make_image, make_index, push_image, push_manifest, sha256
from .servers import PierServer

HOUR = 3600
RETENTION = as_json(
    {"repositories": "keep/*", "keep_last": 2, "protect": ["stable", "release-*"], "untagged_after": "0s"},
    {"repositories": "pulled/*", "keep_pulled_within": "1h", "untagged_after": "1h"},
)
IMMUTABLE = "v*"

Item = tuple[str, str, str, str]  # repository, kind, name, digest


@pytest.fixture(scope="module")
def retention_server(tmp_path_factory, new_storage):
    folder = tmp_path_factory.mktemp("retention") / "data"
    args = ("--retention", RETENTION, "--immutable-tags", IMMUTABLE, "--pull-stats-interval", "0.2s")
    server = PierServer(folder, *args, storage=new_storage(folder)).start()
    yield server
    server.stop()


@pytest.fixture
async def retention_client(retention_server: PierServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=retention_server.url, timeout=30) as http:
        yield http


def items(answer: httpx.Response, repository: str) -> set[Item]:
    assert answer.status_code == 200, answer.text
    found = {(i["repository"], i["kind"], i["name"], i["digest"]) for i in answer.json()["items"]}
    return {item for item in found if item[0] == repository}


def tag(repository: str, name: str, image: Image) -> Item:
    return (repository, "tag", name, image.digest)


def untagged(repository: str, digest: str) -> Item:
    return (repository, "manifest", digest, digest)


async def tags_of(client: httpx.AsyncClient, repository: str) -> list[str]:
    answer = await client.get(f"/v2/{repository}/tags/list")
    assert answer.status_code == 200, answer.text
    return sorted(answer.json()["tags"])


async def test_the_run_deletes_what_the_dry_run_listed_and_gc_frees_the_bytes(
    retention_server, retention_client
) -> None:
    """keep_last 2 among the ordinary tags; protected and immutable tags are not counted, and
    stay however old; what a kept tag reaches (an index's children, a signature) stays."""
    client, storage, repo = retention_client, retention_server.storage, "keep/app"
    shared = os.urandom(3000)
    children = [image_of(shared, os.urandom(1000)), image_of(os.urandom(1000))]
    old = [image_of(shared, os.urandom(2000)), image_of(os.urandom(2000)), image_of(os.urandom(2000))]
    new1, frozen, stable, release = (image_of(os.urandom(500)) for _ in range(4))
    ages = {"v1": 10, "stable": 9, "release-1": 8, "old1": 7, "old2": 6, "old3": 5, "new1": 2, "new2": 1}
    for name, image in [("v1", frozen), ("stable", stable), ("release-1", release), ("new1", new1)]:
        await push_image(client, repo, image, name)
    for i, image in enumerate(old, 1):
        await push_image(client, repo, image, f"old{i}")
    for child in children:
        await push_image(client, repo, child, child.digest)
    index = make_index(children)
    assert (await push_manifest(client, repo, "new2", index, OCI_INDEX)).status_code == 201
    signs_new = image_of(os.urandom(100), subject=descriptor(OCI_INDEX, index))
    signs_old = image_of(os.urandom(100), subject=descriptor(old[0].media_type, old[0].manifest))
    loose = make_image((700,))
    for image in (signs_new, signs_old, loose):
        await push_image(client, repo, image, image.digest)
    for name, hours in ages.items():
        backdate_tag(storage, repo, name, hours * HOUR)

    expected = {tag(repo, f"old{i}", image) for i, image in enumerate(old, 1)}
    expected |= {untagged(repo, image.digest) for image in (*old, signs_old, loose)}
    dry = items(await client.get("/v2/_pier/retention"), repo)
    assert dry == expected
    ran = await client.post("/v2/_pier/retention")
    assert ran.json()["dry_run"] is False
    assert items(ran, repo) == dry
    assert items(await client.get("/v2/_pier/retention"), repo) == set()

    assert await tags_of(client, repo) == ["new1", "new2", "release-1", "stable", "v1"]
    for image in (*old, signs_old, loose):
        assert (await client.get(f"/v2/{repo}/manifests/{image.digest}")).status_code == 404
    recorded = {
        (e["tag"], e["digest"]) for e in await audit(client, action="retention-delete", repository=repo)
    }
    assert recorded == {(name if kind == "tag" else "", digest) for _, kind, name, digest in dry}

    freed = run_storage_command(storage, "gc", "--grace", "0s")
    assert freed.returncode == 0, freed.stderr
    for image in (*old, signs_old, loose):
        for blob in (image.manifest, image.config, *image.layers):
            assert stored(storage, sha256(blob)) == (blob == shared), f"{sha256(blob)} after gc"
    for name, image in [("v1", frozen), ("stable", stable), ("release-1", release), ("new1", new1)]:
        await assert_pulls(client, repo, name, image)
    for image in (*children, signs_new):
        await assert_pulls(client, repo, image.digest, image)
    assert (await client.get(f"/v2/{repo}/manifests/new2")).content == index


async def test_a_recent_pull_keeps_a_tag_the_pull_window_lets_go(retention_server, retention_client) -> None:
    """keep_pulled_within 1h: every tag was pushed 2 h ago; a pull by tag or by digest keeps
    one (counted in memory: the API's plan sees it at once), a HEAD by digest does not."""
    client, storage, repo = retention_client, retention_server.storage, "pulled/app"
    unpulled, by_tag, by_digest, fresh, old_loose, new_loose = (make_image((300,)) for _ in range(6))
    for name, image in [("a", unpulled), ("b", by_tag), ("c", by_digest), ("fresh", fresh)]:
        await push_image(client, repo, image, name)
    for image in (old_loose, new_loose):
        await push_image(client, repo, image, image.digest)
    for name, image in [("a", unpulled), ("b", by_tag), ("c", by_digest)]:
        backdate_tag(storage, repo, name, 2 * HOUR)
        backdate_manifest(storage, repo, image.digest, 2 * HOUR)
    backdate_manifest(storage, repo, old_loose.digest, 2 * HOUR)
    assert (await client.get(f"/v2/{repo}/manifests/b")).status_code == 200
    assert (await client.get(f"/v2/{repo}/manifests/{by_digest.digest}")).status_code == 200
    assert (await client.head(f"/v2/{repo}/manifests/{unpulled.digest}")).status_code == 200

    expected = {tag(repo, "a", unpulled), untagged(repo, unpulled.digest), untagged(repo, old_loose.digest)}
    dry = items(await client.get("/v2/_pier/retention"), repo)
    assert dry == expected
    assert items(await client.post("/v2/_pier/retention"), repo) == dry
    assert await tags_of(client, repo) == ["b", "c", "fresh"]
    assert (await client.get(f"/v2/{repo}/manifests/{new_loose.digest}")).status_code == 200
    assert (await client.get(f"/v2/{repo}/manifests/{old_loose.digest}")).status_code == 404


@pytest.mark.slow  # the pier CLI as a process per step
async def test_pier_retention_offline_sees_flushed_pulls_and_agrees_with_the_api(
    retention_server, retention_client
) -> None:
    client, storage, repo = retention_client, retention_server.storage, "pulled/cli"
    unpulled, pulled = make_image((400,)), make_image((400,))
    for name, image in [("x", unpulled), ("y", pulled)]:
        await push_image(client, repo, image, name)
        backdate_tag(storage, repo, name, 2 * HOUR)
        backdate_manifest(storage, repo, image.digest, 2 * HOUR)
    assert (await client.get(f"/v2/{repo}/manifests/y")).status_code == 200
    wait_until(
        lambda: any(repo.encode() in storage.read(path) for path in storage.files("_stats/pulls")),
        what="the server to write its pull counts (every 0.2 s)",
    )

    def pier(*args: str) -> list[dict]:
        done = run_storage_command(storage, *args, "--retention", RETENTION, "--immutable-tags", IMMUTABLE)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    expected = {tag(repo, "x", unpulled), untagged(repo, unpulled.digest)}
    api = items(await client.get("/v2/_pier/retention"), repo)
    offline = {
        (i["repository"], i["kind"], i["name"], i["digest"]) for i in pier("retention", "--dry-run", "--json")
    }
    assert api == expected and {item for item in offline if item[0] == repo} == expected
    deleted = {(i["repository"], i["kind"], i["name"], i["digest"]) for i in pier("retention", "--json")}
    assert {item for item in deleted if item[0] == repo} == expected
    assert await tags_of(client, repo) == ["y"]

    logged = run_storage_command(storage, "audit", "--repository", repo, "--user", "pier (policy)", "--json")
    assert logged.returncode == 0, logged.stderr
    entries = [json.loads(line) for line in logged.stdout.splitlines()]
    assert {(e["action"], e["tag"], e["digest"]) for e in entries} == {
        ("retention-delete", "x", unpulled.digest),
        ("retention-delete", "", unpulled.digest),
    }
    assert run_storage_command(storage, "gc", "--grace", "0s").returncode == 0
    assert not any(stored(storage, sha256(blob)) for blob in (unpulled.manifest, *unpulled.blobs))
    await assert_pulls(client, repo, "y", pulled)


async def test_retention_runs_on_its_schedule(tmp_path, new_storage) -> None:
    """``--retention-interval``: the server applies the rules by itself, as the policy."""
    folder = tmp_path / "data"
    rules = as_json({"repositories": "timed/*", "keep_last": 1})
    args = ("--retention", rules, "--retention-interval", "1s")
    server = PierServer(folder, *args, storage=new_storage(folder)).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            older, newer = image_of(os.urandom(300)), image_of(os.urandom(300))
            await push_image(client, "timed/app", older, "older")
            backdate_tag(server.storage, "timed/app", "older", HOUR)
            await push_image(client, "timed/app", newer, "newer")

            async def only_newer() -> bool:
                return await tags_of(client, "timed/app") == ["newer"]

            await wait_until_async(only_newer, 10.0, "the scheduled retention run")
            entries = await audit(client, action="retention-delete")
            assert [(e["repository"], e["tag"], e["user"]) for e in entries] == [
                ("timed/app", "older", "pier (policy)")
            ]
    finally:
        server.stop()
