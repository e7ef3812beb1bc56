"""The web UI over plain HTTP: every page's status and headers, escaping of hostile content,
sessions, CSRF and access control. (A real browser drives it in test_ui_browser.py.)"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .helpers import push_blob, push_index, push_manifest, write_htpasswd
from .images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, build_image, build_index, gzip_bytes, sha256
from .servers import PierServer

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer would make a browser send "Origin: null" on forms
}


@dataclass(frozen=True)
class Bytes:
    """A blob made in the test, with what push_blob and push_manifest read of one."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def read(self) -> bytes:
        return self.data

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def blob(media_type: str, data: bytes) -> Bytes:
    return Bytes(media_type, data)


def push_hostile(base: str, repo: str, headers: dict[str, str] | None = None) -> str:
    """An image whose label, env and annotation values are markup; its manifest's digest."""
    layer = blob(OCI_LAYER_GZIP, gzip_bytes(b"\0" * 1024))
    config = blob(
        OCI_CONFIG,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"evil": HOSTILE, HOSTILE: "key"}, "Env": [f"X={HOSTILE}"]},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
                "history": [{"created_by": f"/bin/sh -c echo {HOSTILE}"}],
            }
        ).encode(),
    )
    manifest = blob(
        OCI_MANIFEST,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
                "annotations": {"org.opencontainers.image.description": HOSTILE},
            }
        ).encode(),
    )
    for part in (layer, config):
        push_blob(base, repo, part, headers)
    push_manifest(base, repo, "hostile", manifest, headers)
    return manifest.digest


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PierServer]:
    """An open registry (no auth): an image, an index, a hostile image, a model; 61 repositories."""
    root = tmp_path_factory.mktemp("ui-open")
    server = PierServer(root / "data", "--immutable-tags", "v*").start()
    try:
        image = build_image(root / "layout", "latest")
        for part in image.blobs:
            push_blob(server.url, "team/app", part)
        for tag in ("latest", "v1", "old"):
            push_manifest(server.url, "team/app", tag, image.manifest)
        push_index(server.url, "team/multi", build_index(root / "index", "multi"))
        push_hostile(server.url, "team/evil")
        push_model_with_signature(server.url, "team/llm")
        small = blob(OCI_LAYER_GZIP, gzip_bytes(b"x"))
        for n in range(57):
            push_blob(server.url, f"many/repo-{n:02d}", small)
        yield server
    finally:
        server.stop()


def get(server: PierServer, path: str) -> httpx.Response:
    return httpx.get(server.url + path)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/",
        "/ui/?q=team",
        "/ui/?page=2",
        "/ui/r/team/app",
        "/ui/r/team/app?sort=size&order=asc",
        "/ui/r/team/app?sort=name",
        "/ui/r/team/app/-/m/latest",
        "/ui/r/team/multi/-/m/multi",
        "/ui/usage",
        "/ui/audit",
        "/ui/retention",
    ],
)
def test_every_page_answers_with_the_security_headers(open_registry: PierServer, path: str) -> None:
    response = get(open_registry, path)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert re.fullmatch(r"app;dur=\d+\.\d", response.headers["server-timing"])
    assert "<script>" not in response.text.replace('<script src="/ui/static/pier.js" defer></script>', "")
    assert " style=" not in response.text and "onclick" not in response.text  # the CSP forbids both


def test_the_listing_paginates_searches_and_counts(open_registry: PierServer) -> None:
    first = get(open_registry, "/ui/").text
    assert "61 repositories" in first
    assert first.count('href="/ui/r/') == 50 and 'id="next"' in first
    second = get(open_registry, "/ui/?page=2").text
    assert second.count('href="/ui/r/') == 11 and "team/multi" in second and 'id="prev"' in second
    search = get(open_registry, "/ui/?q=TEAM").text  # case-insensitive
    assert "4 repositories" in search and "many/" not in search


def test_a_repository_page_lists_tags_marks_and_pull_commands(open_registry: PierServer) -> None:
    page = get(open_registry, "/ui/r/team/app?sort=name").text
    tags = re.findall(r'<tr data-tag="([^"]+)">', page)
    assert tags == ["latest", "old", "v1"]
    assert '<span class="mark immutable"' in page.split('data-tag="v1"')[1]
    host = open_registry.host
    for tool in ("pier", "docker", "podman"):
        assert f'data-copy="{tool} pull {host}/team/app:latest"' in page
    assert "linux/amd64" in page
    descending = re.findall(
        r'<tr data-tag="([^"]+)">', get(open_registry, "/ui/r/team/app?sort=name&order=desc").text
    )
    assert descending == ["v1", "old", "latest"]


def test_an_image_page_shows_layers_config_history_and_an_index_its_platforms(
    open_registry: PierServer,
) -> None:
    page = get(open_registry, "/ui/r/team/app/-/m/latest").text
    assert "Layers" in page and "application/vnd.oci.image.layer.v1.tar+gzip" in page
    assert "PATH=" in page and "History" in page and "pier tests: layer 1" in page
    index = get(open_registry, "/ui/r/team/multi/-/m/multi").text
    assert "linux/amd64" in index and "linux/arm64" in index and "An index of 2 manifests" in index


def test_hostile_labels_annotations_and_history_are_text(open_registry: PierServer) -> None:
    page = get(open_registry, "/ui/r/team/evil/-/m/hostile").text
    assert "<script>document.title" not in page and "<img src=x" not in page
    escaped = "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    assert page.count(escaped) >= 4  # a label's value and key, the env, the annotation, the history


def test_unknown_repositories_images_and_hostile_paths_are_404(open_registry: PierServer) -> None:
    for path in (
        "/ui/r/nope",
        "/ui/r/team/app/-/m/nope",
        "/ui/r/team/app/-/m/sha256:" + "0" * 64,
        "/ui/r/..%2f..%2fetc",
        "/ui/r/team/../../etc/passwd",
        "/ui/r/Team/App",
        "/ui/nothing",
    ):
        response = get(open_registry, path)
        assert response.status_code == 404, (path, response.status_code)
        assert "content-security-policy" in response.headers


def test_forms_need_the_sessions_csrf_token(open_registry: PierServer) -> None:
    """Deletes tags of its own (the other tests see team/app's three), and leaves none behind."""
    url = open_registry.url
    latest = httpx.get(f"{url}/v2/team/app/manifests/latest", headers={"accept": OCI_MANIFEST})
    for tag in ("doomed", "v9"):
        put = httpx.put(
            f"{url}/v2/team/app/manifests/{tag}",
            content=latest.content,
            headers={"content-type": OCI_MANIFEST},
        )
        assert put.status_code == 201
    page = httpx.get(f"{url}/ui/r/team/app")
    cookie = page.headers["set-cookie"].split(";", 1)[0]
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    target = f"{url}/ui/r/team/app/-/tags/doomed/delete"
    assert httpx.post(target, data={"csrf": "wrong"}, headers={"cookie": cookie}).status_code == 403
    assert httpx.post(target, data={"csrf": token.group(1)}).status_code == 403  # no session cookie
    foreign = {"cookie": cookie, "origin": "http://evil.example"}
    assert httpx.post(target, data={"csrf": token.group(1)}, headers=foreign).status_code == 403
    assert "doomed" in httpx.get(f"{url}/v2/team/app/tags/list").json()["tags"]
    done = httpx.post(target, data={"csrf": token.group(1)}, headers={"cookie": cookie})
    assert done.status_code == 303 and done.headers["location"] == "/ui/r/team/app"
    assert "doomed" not in httpx.get(f"{url}/v2/team/app/tags/list").json()["tags"]
    # An immutable tag goes only with an admin's explicit override (on an open registry, anyone's).
    v9 = f"{url}/ui/r/team/app/-/tags/v9/delete"
    refused = httpx.post(v9, data={"csrf": token.group(1)}, headers={"cookie": cookie})
    assert refused.status_code == 403 and "immutable" in refused.text
    assert "v9" in httpx.get(f"{url}/v2/team/app/tags/list").json()["tags"]
    overridden = httpx.post(
        v9, data={"csrf": token.group(1), "override": "immutable"}, headers={"cookie": cookie}
    )
    assert overridden.status_code == 303
    assert "v9" not in httpx.get(f"{url}/v2/team/app/tags/list").json()["tags"]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PierServer]:
    """htpasswd users: alice (admin, everything), bob (pull only on team/*); anonymous: nothing."""
    root = tmp_path_factory.mktemp("ui-auth")
    htpasswd = write_htpasswd(root / "htpasswd", {"alice": "alice-pw", "bob": "bob-pw"})
    acl = root / "acl.toml"
    acl.write_text(
        '[[rule]]\naccount = "alice"\nrepository = "*"\nactions = ["*"]\n'
        '[[rule]]\naccount = "bob"\nrepository = "team/*"\nactions = ["pull"]\n'
    )
    server = PierServer(
        root / "data", "--htpasswd", str(htpasswd), "--acl", str(acl), "--admins", "alice"
    ).start()
    alice = {"authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
    image = build_image(root / "layout", "latest")
    for repo in ("team/app", "secret/app"):
        for part in image.blobs:
            push_blob(server.url, repo, part, alice)
        push_manifest(server.url, repo, "latest", image.manifest, alice)
    try:
        yield server
    finally:
        server.stop()


def login(server: PierServer, user: str, password: str) -> tuple[httpx.Response, str]:
    """The login form's round trip; the response and the session cookie ("" if refused)."""
    form = httpx.get(f"{server.url}/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    pending = form.headers["set-cookie"].split(";", 1)[0]
    answer = httpx.post(
        f"{server.url}/ui/login?next=/ui/r/team/app",
        data={"csrf": token.group(1), "username": user, "password": password},
        headers={"cookie": pending},
    )
    cookies = [c for c in answer.headers.get_list("set-cookie") if c.startswith("pier_ui=")]
    return answer, cookies[0].split(";", 1)[0] if cookies else ""


def test_logging_in_sets_a_strict_cookie_and_wrong_passwords_are_audited(guarded: PierServer) -> None:
    answer, cookie = login(guarded, "alice", "alice-pw")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/r/team/app"
    header = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("pier_ui="))
    attributes = {part.strip().lower() for part in header.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/ui"} <= attributes
    assert "alice-pw" not in header
    page = httpx.get(f"{guarded.url}/ui/", headers={"cookie": cookie}).text
    assert "team/app" in page and "secret/app" in page and ">alice<" in page
    refused, none = login(guarded, "alice", "wrong")
    assert refused.status_code == 401 and none == "" and "Wrong user name or password" in refused.text
    admin = {"authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
    entries = httpx.get(f"{guarded.url}/v2/_pier/audit?action=login-failed", headers=admin).json()["entries"]
    assert any(e["user"] == "alice" and e["detail"] == "web UI" for e in entries)


def test_what_a_visitor_sees_follows_the_acl(guarded: PierServer) -> None:
    url = guarded.url
    anonymous = httpx.get(f"{url}/ui/").text
    assert "team/app" not in anonymous and "0 repositories" in anonymous and 'href="/ui/login"' in anonymous
    assert httpx.get(f"{url}/ui/r/team/app").status_code == 404
    for page in ("/ui/audit", "/ui/retention"):
        redirect = httpx.get(url + page)
        assert redirect.status_code == 303 and redirect.headers["location"].startswith("/ui/login")
    _, bob = login(guarded, "bob", "bob-pw")
    listing = httpx.get(f"{url}/ui/", headers={"cookie": bob}).text
    assert "team/app" in listing and "secret/app" not in listing
    assert httpx.get(f"{url}/ui/r/secret/app", headers={"cookie": bob}).status_code == 404
    page = httpx.get(f"{url}/ui/r/team/app", headers={"cookie": bob}).text
    assert "Delete" not in page and "delete-repository" not in page
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    refused = httpx.post(
        f"{url}/ui/r/team/app/-/tags/latest/delete", data={"csrf": token.group(1)}, headers={"cookie": bob}
    )
    assert refused.status_code == 403
    assert httpx.get(f"{url}/ui/audit", headers={"cookie": bob}).status_code == 403
    forged = bob[:-4] + ("AAAA" if not bob.endswith("AAAA") else "BBBB")
    assert "team/app" not in httpx.get(f"{url}/ui/", headers={"cookie": forged}).text


def test_login_redirects_only_within_the_ui(guarded: PierServer) -> None:
    form = httpx.get(f"{guarded.url}/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    pending = form.headers["set-cookie"].split(";", 1)[0]
    for target in ("//evil.example/", "https://evil.example/", "/ui/\\evil", "/v2/_catalog"):
        answer = httpx.post(
            f"{guarded.url}/ui/login",
            params={"next": target},
            data={"csrf": token.group(1), "username": "bob", "password": "bob-pw"},
            headers={"cookie": pending},
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/", target


def test_the_ui_can_be_turned_off(tmp_path: Path) -> None:
    server = PierServer(tmp_path / "data", "--no-ui").start()
    try:
        response = httpx.get(f"{server.url}/ui/")
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
    finally:
        server.stop()


def push_model_with_signature(base: str, repo: str) -> tuple[str, str]:
    """A ModelPack model (config and two weight files) and a signature whose subject it is."""
    files = [("model.safetensors", b"w" * 4096), ("tokenizer.json", b'{"v": 1}')]
    layers = [
        {
            **blob("application/vnd.cncf.model.weight.v1.raw", data).descriptor(),
            "annotations": {"org.cncf.model.filepath": path},
        }
        for path, data in files
    ]
    config = blob(
        "application/vnd.cncf.model.config.v1+json",
        json.dumps(
            {
                "descriptor": {"name": "tiny-llm", "family": "llama", "version": "3.1"},
                "config": {"format": "safetensors", "paramSize": "8b", "precision": "bf16"},
                "modelfs": {"type": "layers", "diffIds": [sha256(d) for _, d in files]},
            }
        ).encode(),
    )
    manifest = blob(
        OCI_MANIFEST,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.cncf.model.manifest.v1+json",
                "config": config.descriptor(),
                "layers": layers,
            }
        ).encode(),
    )
    for _, data in files:
        push_blob(base, repo, blob("application/vnd.cncf.model.weight.v1.raw", data))
    push_blob(base, repo, config)
    push_manifest(base, repo, "v1", manifest)
    empty = blob("application/vnd.oci.empty.v1+json", b"{}")
    signature = blob(
        OCI_MANIFEST,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                "config": empty.descriptor(),
                "layers": [empty.descriptor()],
                "subject": manifest.descriptor(),
            }
        ).encode(),
    )
    push_blob(base, repo, empty)
    push_manifest(base, repo, signature.digest, signature)
    return manifest.digest, signature.digest


def test_a_model_page_shows_its_metadata_files_and_referrers(open_registry: PierServer) -> None:
    model, signature = push_model_with_signature(open_registry.url, "team/llm")  # as the fixture did
    page = get(open_registry, "/ui/r/team/llm/-/m/v1").text
    assert "<h3>Model</h3>" in page and "tiny-llm" in page and "llama" in page and "safetensors" in page
    assert "<h3>Files</h3>" in page
    assert "model.safetensors" in page and "tokenizer.json" in page
    assert "application/vnd.cncf.model.weight.v1.raw" in page
    assert f'href="/ui/r/team/llm/-/m/{signature}"' in page
    assert "application/vnd.dev.cosign.artifact.sig.v1+json" in page
    tags = get(open_registry, "/ui/r/team/llm").text
    assert "application/vnd.cncf.model.manifest.v1+json" in tags  # the artifact type, for a tag
    assert get(open_registry, f"/ui/r/team/llm/-/m/{model}").status_code == 200
