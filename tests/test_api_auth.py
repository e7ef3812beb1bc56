"""Access control: Basic auth against an htpasswd file, and an ordered ACL, with hostile callers."""

from __future__ import annotations

import base64
import json
import subprocess

import httpx
import pytest

from .auth_users import ACL, USERS, basic
from .helpers import push_blob, push_manifest, run_pier, write_htpasswd
from .images import build_image
from .servers import serve_refused


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from .servers import PierServer

    base = tmp_path_factory.mktemp("auth")
    htpasswd = write_htpasswd(base / "htpasswd", USERS)
    acl = base / "acl.toml"
    acl.write_text(ACL)
    server = PierServer(base / "data", "--htpasswd", str(htpasswd), "--acl", str(acl)).start()
    image = build_image(base / "image", "v1")
    for repo in ("alice/private", "public/tools"):
        for blob in image.blobs:
            push_blob(server.url, repo, blob, basic("alice", "wonderland"))
        push_manifest(server.url, repo, "v1", image.manifest, basic("alice", "wonderland"))
    yield server, image
    server.stop()


def test_the_base_endpoint_challenges_for_basic_auth(secured) -> None:
    server, _ = secured
    answer = httpx.get(f"{server.url}/v2/")
    assert answer.status_code == 401  # as distribution does: the probe tells clients to log in
    assert answer.headers["www-authenticate"].startswith('Basic realm="pier"')
    denied = httpx.put(f"{server.url}/v2/public/tools/manifests/v2", content=b"{}")
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"].startswith('Basic realm="pier"')
    assert denied.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert httpx.get(f"{server.url}/v2/", headers=basic("alice", "wonderland")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        basic("alice", "not-her-password"),
        basic("nobody", "wonderland"),
        basic("anonymous", ""),
        {"Authorization": "Basic !!!not-base64!!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
        {"Authorization": "Bearer some.jwt.token"},
        {"Authorization": "Basic " + "A" * 10_000},
    ],
    ids=[
        "wrong-password",
        "unknown-user",
        "anonymous-name",
        "garbled",
        "no-colon",
        "not-utf8",
        "bearer",
        "huge",
    ],
)
def test_bad_credentials_are_401_and_never_echoed(secured, headers) -> None:
    server, _ = secured
    answer = httpx.get(f"{server.url}/v2/public/tools/manifests/v1", headers=headers)
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "wonderland" not in answer.text and "not-her-password" not in answer.text
    assert "wonderland" not in server.log() and "not-her-password" not in server.log()


def test_the_acl_decides_and_denial_does_not_reveal_existence(secured) -> None:
    server, image = secured
    url = server.url
    manifest = "/v2/alice/private/manifests/v1"
    assert httpx.get(url + manifest, headers=basic("alice", "wonderland")).status_code == 200
    assert httpx.get(url + "/v2/public/tools/manifests/v1").status_code == 200  # anonymous pull
    existing = httpx.get(url + manifest, headers=basic("bob", "builder"))
    missing = httpx.get(url + "/v2/alice/never-pushed/manifests/v1", headers=basic("bob", "builder"))
    assert existing.status_code == missing.status_code == 403
    assert existing.json()["errors"][0]["code"] == "DENIED"
    assert existing.json() == missing.json()  # the same answer: bob cannot tell which exists
    anonymous = httpx.get(url + manifest)
    assert (
        anonymous.status_code == 401
        and anonymous.json() == httpx.get(url + "/v2/alice/none/tags/list").json()
    )
    blob = image.layers[0].digest
    assert (
        httpx.delete(f"{url}/v2/public/tools/blobs/{blob}", headers=basic("bob", "builder")).status_code
        == 403
    )
    assert httpx.post(f"{url}/v2/bob/mine/blobs/uploads/", headers=basic("bob", "builder")).status_code == 202


def test_catalog_lists_only_what_the_caller_may_pull(secured) -> None:
    server, _ = secured

    def catalog(headers=None):
        return httpx.get(f"{server.url}/v2/_catalog", headers=headers).json()["repositories"]

    assert catalog() == ["public/tools"]
    assert catalog(basic("bob", "builder")) == ["public/tools"]
    assert catalog(basic("alice", "wonderland")) == ["alice/private", "public/tools"]


def test_no_mount_from_a_repository_the_caller_may_not_pull(secured) -> None:
    server, image = secured
    digest = image.layers[0].digest
    query = f"?mount={digest}&from=alice/private"
    stolen = httpx.post(f"{server.url}/v2/bob/loot/blobs/uploads/{query}", headers=basic("bob", "builder"))
    assert stolen.status_code == 202  # an upload session, as if the blob were not there
    assert (
        httpx.head(f"{server.url}/v2/bob/loot/blobs/{digest}", headers=basic("bob", "builder")).status_code
        == 404
    )
    allowed = httpx.post(
        f"{server.url}/v2/alice/copy/blobs/uploads/{query}", headers=basic("alice", "wonderland")
    )
    assert allowed.status_code == 201


@pytest.mark.slow  # the pier CLI as a process per step
def test_pier_client_logs_in_pushes_and_is_refused_where_it_may_not(secured, tmp_path) -> None:
    server, _ = secured

    def pier(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_pier(
            tmp_path / "home", *args, env={"DOCKER_CONFIG": str(tmp_path / "docker")}, stdin=stdin
        )

    wrong = pier("login", server.host, "-u", "bob", "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 1 and "wrong username or password" in wrong.stderr
    assert pier("login", server.host, "-u", "bob", "--password-stdin", stdin="builder\n").returncode == 0
    assert json.loads((tmp_path / "docker" / "config.json").read_text())["auths"][server.host]
    assert pier("pull", "-q", f"{server.host}/public/tools:v1").returncode == 0
    assert pier("tag", f"{server.host}/public/tools:v1", f"{server.host}/bob/tools:v1").returncode == 0
    pushed = pier("push", f"{server.host}/bob/tools:v1")
    assert pushed.returncode == 0, pushed.stderr
    assert pier("tag", f"{server.host}/public/tools:v1", f"{server.host}/alice/stolen:v1").returncode == 0
    refused = pier("push", f"{server.host}/alice/stolen:v1")
    assert refused.returncode == 1 and "403" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    "content, message",
    [("alice:$apr1$abc$def\n", "only bcrypt entries"), ("no-separator\n", "expected user:hash")],
)
def test_a_bad_htpasswd_file_stops_serve_with_one_line(tmp_path, content, message) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(content)
    result = serve_refused(tmp_path / "d", "--htpasswd", str(htpasswd))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
