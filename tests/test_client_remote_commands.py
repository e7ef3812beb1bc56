"""Commands that work on a registry without the local store: inspect --remote, tags, delete,
pull --all-tags; against pier and against distribution (the reference registry)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from puller.store.content_store import ContentStore

from .helpers import push_blob, push_index, push_manifest, run_pier
from .images import Image, build_image, build_index, random_files

pytestmark = pytest.mark.slow  # the pier CLI as a process per step, and distribution


@pytest.fixture(params=["pier", "distribution"])
def server(request: pytest.FixtureRequest, registry) -> str:
    """host:port of a registry: pier's, or Debian's docker-registry."""
    return registry.host if request.param == "pier" else request.getfixturevalue("distribution")


def push_image(host: str, repo: str, image: Image, *tags: str) -> None:
    for blob in image.blobs:
        push_blob(f"http://{host}", repo, blob)
    for tag in tags:
        push_manifest(f"http://{host}", repo, tag, image.manifest)


def test_inspect_remote_reads_without_pulling(server, tmp_path) -> None:
    index = build_index(tmp_path / "layout", "v1")
    push_index(f"http://{server}", "client/inspect", index)
    home = tmp_path / "home"
    reference = f"{server}/client/inspect:v1"

    raw = run_pier(home, "inspect", "--remote", "--raw", reference)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.encode() == index.index.read()  # the index, byte for byte as served

    arm = index.image("arm64")
    shown = run_pier(home, "inspect", "--platform", "linux/arm64", f"docker://{reference}")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["Digest"] == index.digest and document["ManifestDigest"] == arm.digest
    assert document["Index"] == json.loads(index.index.read())
    assert document["Manifest"] == json.loads(arm.manifest.read())
    assert document["Config"] == json.loads(arm.config.read())

    config = run_pier(
        home, "inspect", "--remote", "--config", "--raw", "--platform", "linux/arm64", reference
    )
    assert config.returncode == 0 and config.stdout.encode() == arm.config.read(), config.stderr
    formatted = run_pier(
        home,
        "inspect",
        "--remote",
        "--platform",
        "linux/arm64",
        "--format",
        "{{.ManifestDigest}} {{.Config.architecture}} {{json .Config.config.Cmd}}",
        reference,
    )
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == f'{arm.digest} arm64 ["/bin/sh"]\n'

    missing = run_pier(home, "inspect", "--remote", "--platform", "linux/s390x", reference)
    assert missing.returncode == 1 and "has no image for linux/s390x" in missing.stderr
    assert list(ContentStore(home).blobs()) == []  # nothing was pulled
    local = run_pier(home, "inspect", reference)  # without --remote: the local store only
    assert local.returncode == 1 and "not in the local store" in local.stderr and "--remote" in local.stderr
    unknown = run_pier(home, "inspect", "--remote", f"{server}/client/inspect:nope")
    assert unknown.returncode == 1 and "MANIFEST_UNKNOWN" in unknown.stderr
    assert "Traceback" not in unknown.stderr + missing.stderr + local.stderr


def test_tags_lists_every_tag(server, tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1")
    tags = sorted(f"t{i}" for i in range(7))
    push_image(server, "client/tags", image, *tags)
    listed = run_pier(tmp_path / "home", "tags", f"{server}/client/tags")
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == tags  # in the registry's order: distribution's is not sorted
    with_tag = run_pier(tmp_path / "home", "tags", f"{server}/client/tags:t1")
    assert with_tag.returncode == 1 and "without tag" in with_tag.stderr
    unknown = run_pier(tmp_path / "home", "tags", f"{server}/client/no-such-repo")
    assert unknown.returncode == 1 and "NAME_UNKNOWN" in unknown.stderr, unknown.stderr


def test_tags_follow_the_link_header_through_every_page(registry, tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1")
    tags = sorted(f"p{i}" for i in range(7))
    push_image(registry.host, "client/tag-pages", image, *tags)
    first = httpx.get(f"{registry.url}/v2/client/tag-pages/tags/list?n=2")
    assert first.json()["tags"] == tags[:2] and "next" in first.links  # the registry pages them
    listed = run_pier(tmp_path / "home", "tags", "--page-size", "2", f"{registry.host}/client/tag-pages")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == tags


class TagServer:
    """A hostile registry: every tag list it serves is ``body``, with ``link`` as its next page."""

    def __init__(self, body: bytes, link: str | None) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if link:
                    self.send_header("Link", link)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> TagServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


TAGS_A = json.dumps({"name": "x/y", "tags": ["a"]}).encode()


@pytest.mark.parametrize(
    ("body", "link", "message"),
    [
        # Following it would hand another host the registry's credentials.
        (
            TAGS_A,
            '<http://198.51.100.7/v2/x/y/tags/list?last=a>; rel="next"',
            "on another host (198.51.100.7)",
        ),
        (TAGS_A, '</v2/x/y/tags/list>; rel="next"', "link back to an earlier page"),
        (json.dumps({"tags": ["ok", "\x1b[31mred"]}).encode(), None, "invalid tag '\\x1b[31mred'"),
        (json.dumps({"tags": "a"}).encode(), None, "not a list of strings"),
        (b"[" * 100_000 + b"]" * 100_000, None, "not usable JSON: nested more than"),
    ],
)
def test_tags_from_a_hostile_registry_are_one_line(
    body: bytes, link: str | None, message: str, tmp_path
) -> None:
    with TagServer(body, link) as server:
        listed = run_pier(tmp_path / "home", "tags", f"{server.host}/x/y")
        assert listed.returncode == 1 and message in listed.stderr, listed.stderr
        assert len(listed.stderr.splitlines()) == 1 and "\x1b" not in listed.stderr
        assert server.requests == ["/v2/x/y/tags/list"]  # no second page was asked for


def test_delete_resolves_a_tag_to_its_digest(server, tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1")
    push_image(server, "client/delete", image, "v1", "v2")
    deleted = run_pier(tmp_path / "home", "delete", f"{server}/client/delete:v1")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"Deleted {server}/client/delete:v1\nDigest: {image.digest}\n"
    accept = {"Accept": image.manifest.media_type}
    for reference in (image.digest, "v1", "v2"):  # the manifest, and every tag that named it
        gone = httpx.get(f"http://{server}/v2/client/delete/manifests/{reference}", headers=accept)
        assert gone.status_code == 404, (reference, gone.text)
    again = run_pier(tmp_path / "home", "delete", f"{server}/client/delete@{image.digest}")
    assert again.returncode == 1 and "MANIFEST_UNKNOWN" in again.stderr, again.stderr
    assert len(again.stderr.splitlines()) == 1


def test_delete_says_when_the_registry_refuses(start_registry, tmp_path) -> None:
    pier = start_registry(env={"PIER_DELETE_ENABLED": "false"})
    image = build_image(tmp_path / "layout", "v1")
    push_image(pier.host, "client/no-delete", image, "v1")
    refused = run_pier(tmp_path / "home", "delete", f"{pier.host}/client/no-delete:v1")
    assert refused.returncode == 1
    line = f"pier: {pier.host}/client/no-delete:v1: the registry refused the delete: 405 UNSUPPORTED"
    assert refused.stderr.startswith(line) and "deletes are disabled" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    kept = httpx.get(
        f"{pier.url}/v2/client/no-delete/manifests/v1", headers={"Accept": image.manifest.media_type}
    )
    assert kept.status_code == 200


def test_pull_all_tags(server, tmp_path) -> None:
    images = {
        tag: build_image(tmp_path / tag, tag, layers=[random_files([2000], f"{tag}/f", seed=i)])
        for i, tag in enumerate(("a", "b", "c"))
    }
    for tag, image in images.items():
        push_image(server, "client/all-tags", image, tag)
    home = tmp_path / "home"
    pulled = run_pier(home, "pull", "--all-tags", "-q", f"{server}/client/all-tags")
    assert pulled.returncode == 0, pulled.stderr
    assert sorted(pulled.stdout.split()) == sorted(image.digest for image in images.values())
    store = ContentStore(home)
    assert {t: store.get_ref(f"{server}/client/all-tags", t) for t in "abc"} == {
        t: images[t].digest for t in "abc"
    }
    one = run_pier(home, "pull", "--all-tags", f"{server}/client/all-tags:a")
    assert one.returncode == 1 and "without tag or digest" in one.stderr


def test_remote_commands_ask_a_token_for_what_they_do(token_registry, tmp_path) -> None:
    """distribution with token auth: each command asks for its scope (pull, delete) and gets in."""
    host, tokens = token_registry
    image = build_image(tmp_path / "layout", "v1")
    push_token = tokens.issue("alice", ["repository:client/tokens:pull,push"])
    headers = {"Authorization": f"Bearer {push_token}"}
    for blob in image.blobs:
        push_blob(f"http://{host}", "client/tokens", blob, headers)
    push_manifest(f"http://{host}", "client/tokens", "v1", image.manifest, headers)
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    login = base64.b64encode(b"alice:wonderland").decode()
    config.write_text(json.dumps({"auths": {host: {"auth": login}}}))
    env = {"DOCKER_CONFIG": str(config.parent)}
    home = tmp_path / "home"

    listed = run_pier(home, "tags", f"{host}/client/tokens", env=env)
    assert listed.returncode == 0 and listed.stdout == "v1\n", listed.stderr
    shown = run_pier(
        home, "inspect", "--remote", "--format", "{{.ManifestDigest}}", f"{host}/client/tokens:v1", env=env
    )
    assert shown.returncode == 0 and shown.stdout == f"{image.digest}\n", shown.stderr
    deleted = run_pier(home, "delete", "-q", f"{host}/client/tokens:v1", env=env)
    assert deleted.returncode == 0 and deleted.stdout == f"{image.digest}\n", deleted.stderr
    asked = {scope for request in tokens.requests for scope in request["scopes"]}
    assert "repository:client/tokens:delete" in asked
    assert all(request["user"] == "alice" for request in tokens.requests)
