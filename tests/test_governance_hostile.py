"""Hostile inputs against the web UI and the governance API: a descriptor naming another
repository's config, a password changed under a session, oversized and non-ASCII forms, a
cross-site form posting to the API, a blob delete undermining an immutable tag, a flood of
bad logins, and terminal escapes in the audit log."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from registry.cli import _printable

from .governance import audit, image_of
from .helpers import wait_until, write_htpasswd
from .oci import OCI_CONFIG, OCI_MANIFEST, descriptor, push_blob, push_image, push_manifest, sha256
from .servers import PierServer

SECRET_ENV = "DB_PASSWORD=hunter2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PierServer]:
    """alice (admin, everything), bob (everything under bob/ only); tags v* are immutable."""
    root = tmp_path_factory.mktemp("hostile")
    htpasswd = write_htpasswd(root / "htpasswd", {"alice": "alice-pw", "bob": "bob-pw"})
    acl = root / "acl.toml"
    acl.write_text(
        '[[rule]]\naccount = "alice"\nrepository = "*"\nactions = ["*"]\n'
        '[[rule]]\naccount = "bob"\nrepository = "bob/*"\nactions = ["*"]\n'
    )
    args = ("--htpasswd", str(htpasswd), "--acl", str(acl), "--admins", "alice", "--immutable-tags", "v*")
    running = PierServer(root / "data", *args).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def alice(server: PierServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, auth=("alice", "alice-pw"), timeout=30) as http:
        yield http


@pytest.fixture
async def bob(server: PierServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, auth=("bob", "bob-pw"), timeout=30) as http:
        yield http


def ui_login(server: PierServer, user: str, password: str) -> str:
    """The session cookie of a login through the form."""
    form = httpx.get(f"{server.url}/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    answer = httpx.post(
        f"{server.url}/ui/login",
        data={"csrf": token.group(1), "username": user, "password": password},
        headers={"cookie": form.headers["set-cookie"].split(";", 1)[0]},
    )
    assert answer.status_code == 303, answer.text
    return next(c for c in answer.headers.get_list("set-cookie") if c.startswith("pier_ui=")).split(";")[0]


async def test_a_descriptor_naming_another_repositorys_config_shows_nothing_of_it(
    server: PierServer, alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    config = json.dumps({"os": "linux", "architecture": "amd64", "config": {"Env": [SECRET_ENV]}}).encode()
    await push_image(alice, "team-a/secret", image_of(b"layer"), "latest")
    await push_blob(alice, "team-a/secret", config)
    # bob cannot pull team-a/secret; a foreign (urls) descriptor is not checked at push, so he
    # may name its config by digest, with a size that passes any limit.
    foreign = {**descriptor(OCI_CONFIG, config), "size": 10, "urls": ["http://example.invalid/x"]}
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": foreign, "layers": []}
    ).encode()
    assert (await push_manifest(bob, "bob/leak", "latest", manifest)).status_code == 201
    assert (await bob.get(f"/v2/team-a/secret/blobs/{sha256(config)}")).status_code in (401, 403, 404)
    cookie = ui_login(server, "bob", "bob-pw")
    page = httpx.get(f"{server.url}/ui/r/bob/leak/-/m/latest", headers={"cookie": cookie})
    assert page.status_code == 200
    assert "hunter2" not in page.text and "DB_PASSWORD" not in page.text
    listing = httpx.get(f"{server.url}/ui/r/bob/leak", headers={"cookie": cookie})
    assert listing.status_code == 200 and "linux/amd64" not in listing.text  # no platform from it either


def test_a_session_ends_when_its_users_password_changes(server: PierServer) -> None:
    cookie = ui_login(server, "bob", "bob-pw")
    assert ">bob<" in httpx.get(f"{server.url}/ui/", headers={"cookie": cookie}).text
    htpasswd = Path(server.args[server.args.index("--htpasswd") + 1])
    original = htpasswd.read_text()
    try:
        write_htpasswd(htpasswd, {"alice": "alice-pw", "bob": "a-new-password"})
        wait_until(
            lambda: ">bob<" not in httpx.get(f"{server.url}/ui/", headers={"cookie": cookie}).text,
            10.0,
            "the old session to end (the htpasswd file is looked at once a second)",
        )
        page = httpx.get(f"{server.url}/ui/r/bob/leak", headers={"cookie": cookie})
        assert page.status_code == 404  # anonymous again: nothing of bob's is visible
    finally:
        htpasswd.write_text(original)


def test_oversized_non_form_and_non_ascii_posts_are_refused_before_parsing(server: PierServer) -> None:
    url = f"{server.url}/ui/login"
    big = httpx.post(
        url, content=b"a=" + b"x" * (1 << 20), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert big.status_code == 403 and "at most" in big.text
    multipart = httpx.post(url, files={"f": ("f", b"x")})
    assert multipart.status_code == 403
    assert httpx.post(url, data={"csrf": "é", "username": "bob", "password": "x"}).status_code == 403
    strange = httpx.get(f"{server.url}/ui/", headers={b"cookie": "pier_ui=abc.é".encode()})
    assert strange.status_code == 200 and "0 repositories" in strange.text


async def test_a_cross_site_request_cannot_change_the_registry(alice: httpx.AsyncClient) -> None:
    """A browser holding alice's Basic credentials, made to post by another site's form."""
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        answer = await alice.post("/v2/_pier/retention", headers=headers)
        assert answer.status_code == 403 and answer.json()["errors"][0]["code"] == "DENIED"
        upload = await alice.post("/v2/team-a/x/blobs/uploads/", headers=headers)
        assert upload.status_code == 403
    assert (await alice.post("/v2/team-a/x/blobs/uploads/")).status_code == 202  # no Origin: a client


async def test_a_blob_of_an_immutable_image_is_unlinked_only_with_an_admins_override(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    layer = b"immutable layer " * 64
    image = image_of(layer)
    await push_image(bob, "bob/frozen", image, "v1.0")
    refused = await bob.delete(f"/v2/bob/frozen/blobs/{sha256(layer)}?override=immutable")
    assert refused.status_code == 403 and "immutable tag v1.0" in refused.json()["errors"][0]["message"]
    assert (await bob.get(f"/v2/bob/frozen/blobs/{sha256(layer)}")).status_code == 200
    done = await alice.delete(f"/v2/bob/frozen/blobs/{sha256(layer)}?override=immutable")
    assert done.status_code == 202
    entries = await audit(alice, action="immutable-denied", repository="bob/frozen")
    assert entries and entries[0]["user"] == "bob" and entries[0]["digest"] == sha256(layer)


async def test_a_flood_of_bad_logins_is_audited_ten_times_a_minute(
    server: PierServer, alice: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as stranger:
        for n in range(15):
            await stranger.get("/v2/flood/x/tags/list", auth=(f"guess-{n}", "wrong"))
        for _ in range(5):  # a bearer token or garbage claims no user: nothing to record
            await stranger.get("/v2/flood/x/tags/list", headers={"authorization": "Bearer garbage"})
    entries = await audit(alice, action="login-failed", repository="flood/x")
    assert len(entries) == 10  # at most ten a minute from one address; the rest counted, not written
    assert {e["user"] for e in entries} == {f"guess-{n}" for n in range(10)}


def test_audit_lines_never_carry_terminal_escapes() -> None:
    hostile = "mallory\x1b[2J\x1b]0;owned\x07\nFAKE 2026 push team-a/x v1 admin@1.2.3.4"
    shown = _printable(hostile)
    assert "\x1b" not in shown and "\n" not in shown and "\x07" not in shown
    assert shown.startswith("mallory\\x1b[2J") and "\\nFAKE" in shown
