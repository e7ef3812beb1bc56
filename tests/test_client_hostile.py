"""Hostile input to the client outside the unpacker: lying registries, crafted layouts, bad names."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from puller.store.content_store import ContentStore
from puller.store.platforms import Platform

from .helpers import run_pier
from .images import build_image
from .scripted import Answer, Request, Script, ScriptedServer
from .tls import make_certificates

pytestmark = pytest.mark.slow  # the pier CLI as a process per step

ZERO = "sha256:" + "0" * 64


class FakeRegistry:
    """Serves one manifest body for every manifest request: whatever a test wants to lie with."""

    def __init__(self, manifest: bytes) -> None:
        body = manifest

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200 if "/manifests/" in self.path else 404)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def manifest(config_digest: object = ZERO, layers: object = None, size: object = 2) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": size,
            },
            "layers": [] if layers is None else layers,
        }
    ).encode()


@pytest.mark.parametrize(
    "body, reason",
    [
        (manifest(config_digest="sha256:../../../../etc/passwd"), "invalid or unsupported digest"),
        (manifest(config_digest="md5:" + "0" * 32), "invalid or unsupported digest"),
        (manifest(size=-5), "invalid size"),
        (manifest(size="12"), "invalid size"),
        (manifest(layers=["not a descriptor"]), "layers[0] is not a descriptor"),
        (manifest(layers={"digest": ZERO}), "without a layers list"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"\xff\xfe not json", "not valid JSON"),
        (json.dumps({"manifests": [{"digest": "sha256:zz", "size": 1}]}).encode(), "manifests[0]"),
    ],
)
def test_a_malformed_manifest_is_refused_in_one_line(body: bytes, reason: str, tmp_path) -> None:
    fake = FakeRegistry(body)
    try:
        result = run_pier(tmp_path / "home", "pull", f"{fake.host}/hostile/image:v1")
    finally:
        fake.close()
    assert result.returncode == 1
    assert reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "home" / "blobs").exists()


def test_a_manifest_that_is_not_what_its_digest_says_is_refused(tmp_path) -> None:
    body = manifest()
    wrong = "sha256:" + hashlib.sha256(body + b" ").hexdigest()
    fake = FakeRegistry(body)
    try:
        result = run_pier(tmp_path / "home", "pull", f"{fake.host}/hostile/image@{wrong}")
    finally:
        fake.close()
    assert result.returncode == 1 and f"expected {wrong}" in result.stderr


def test_a_crafted_layout_cannot_read_outside_itself(tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not import me")
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    traversal = {"digest": "sha256:../../secret", "size": 16, "mediaType": "application/octet-stream"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [traversal]}))
    result = run_pier(tmp_path / "home", "load", str(layout))
    assert result.returncode == 1
    assert "invalid or unsupported digest" in result.stderr and "Traceback" not in result.stderr

    # A valid manifest whose layer descriptor tries the same through the manifest itself.
    body = manifest(layers=[traversal])
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(body)
    entry = {
        "digest": f"sha256:{digest}",
        "size": len(body),
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    result = run_pier(tmp_path / "home", "load", str(layout))
    assert result.returncode == 1
    assert "is not a valid manifest or index" in result.stderr and "Traceback" not in result.stderr
    assert not any(ContentStore(tmp_path / "home").blobs())  # nothing imported, not even the manifest


def test_container_names_cannot_leave_the_containers_folder(registry, tmp_path) -> None:
    victim = tmp_path / "home" / "victim"
    victim.mkdir(parents=True)
    (victim / "state.json").write_text("{}")
    for name in ("../victim", "..", "a/b", ".hidden", "x" * 65):
        result = run_pier(tmp_path / "home", "rm", name)
        assert result.returncode == 1 and "invalid container name" in result.stderr, name
    assert (victim / "state.json").exists()

    image = build_image(tmp_path / "img", "v1")
    from .helpers import push_blob, push_manifest

    for blob in image.blobs:
        push_blob(registry.url, "client/hostile-name", blob)
    push_manifest(registry.url, "client/hostile-name", "v1", image.manifest)
    result = run_pier(
        tmp_path / "home", "run", "--rm", "--name", "../victim", f"{registry.host}/client/hostile-name:v1"
    )
    assert result.returncode == 1 and "invalid container name" in result.stderr


# -- every answer is untrusted: auth, headers, sizes, depth ----------------------------


def _docker_config(folder: Path, host: str, user: str = "alice", password: str = "secret") -> dict[str, str]:
    """A docker config holding a login for ``host``; the environment that points pier at it."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": pair}}}))
    return {"DOCKER_CONFIG": str(folder)}


def _challenge(realm: str) -> Script:
    def script(request: Request) -> Answer:
        return Answer(401, [("WWW-Authenticate", f'Bearer realm="{realm}",service="reg"')])

    return script


def _one_line_failure(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_credentials_never_go_from_an_https_registry_to_a_plain_http_realm(tmp_path) -> None:
    certificates = make_certificates(tmp_path / "pki")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificates.cert, certificates.key)
    with ScriptedServer(lambda r: Answer(200, body=b'{"token": "t"}')) as realm:
        # Another host: "localhost" is not the registry's "127.0.0.1", and plain HTTP.
        leak = f"http://localhost:{realm.server.server_address[1]}/token"
        with ScriptedServer(_challenge(leak), tls=tls) as registry:
            env = _docker_config(tmp_path / "docker", registry.host)
            result = run_pier(
                tmp_path / "home",
                "pull",
                "--ca-cert",
                str(certificates.ca),
                f"{registry.host}/a/b:1",
                env=env,
            )
            login = run_pier(
                tmp_path / "home",
                "login",
                "-u",
                "alice",
                "--password-stdin",
                "--ca-cert",
                str(certificates.ca),
                registry.host,
                env=env,
                stdin="secret\n",
            )
    _one_line_failure(result, "refusing to downgrade")
    _one_line_failure(login, "refusing to downgrade")
    assert realm.requests == []  # the password never left, not even to be refused


def test_a_plain_http_registry_may_send_the_login_only_to_its_own_host(tmp_path) -> None:
    with ScriptedServer(lambda r: Answer(200, body=b'{"token": "t"}')) as realm:
        elsewhere = f"http://localhost:{realm.server.server_address[1]}/token"
        with ScriptedServer(_challenge(elsewhere)) as registry:
            env = _docker_config(tmp_path / "docker", registry.host)
            result = run_pier(tmp_path / "home", "pull", f"{registry.host}/a/b:1", env=env)
    _one_line_failure(result, "plain HTTP on another host")
    assert realm.requests == []


def _image_registry(image, token: dict) -> Script:
    """A registry serving one image, for a Bearer token only, from a realm on its own host."""
    blobs = {blob.digest: blob for blob in (image.manifest, *image.blobs)}

    def script(request: Request) -> Answer:
        if request.path.startswith("/token"):
            return Answer(200, [("Content-Type", "application/json")], json.dumps(token).encode())
        if request.headers.get("authorization") != "Bearer t":
            realm = f"http://{request.headers['host']}/token"
            return Answer(401, [("WWW-Authenticate", f'Bearer realm="{realm}",service="reg"')])
        if "/manifests/" in request.path:
            return Answer(200, [("Content-Type", image.manifest.media_type)], image.manifest.read())
        blob = blobs.get(request.path.rsplit("/", 1)[-1])
        return Answer(200, body=blob.read()) if blob else Answer(404)

    return script


@pytest.mark.parametrize("expires_in", ["soon", -1, None, [1], 1e999])
def test_a_token_with_a_nonsense_lifetime_is_used_for_the_default_one(expires_in, tmp_path) -> None:
    image = build_image(tmp_path / "img", "v1")
    with ScriptedServer(_image_registry(image, {"token": "t", "expires_in": expires_in})) as registry:
        result = run_pier(tmp_path / "home", "pull", "-q", f"{registry.host}/a/b:v1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == image.digest


@pytest.mark.parametrize(
    "token, fragment",
    [
        ({"token": 5}, "no token"),
        ({"token": "t\r\nX-Evil: 1"}, "characters an HTTP header cannot carry"),
        ({"token": "t" * (2 << 20)}, "the answer is larger than 1048576 bytes"),
        ([[[["deep"]]]] * 2, "not a JSON object"),
    ],
)
def test_a_token_answer_without_a_usable_token_fails_in_one_line(token, fragment, tmp_path) -> None:
    image = build_image(tmp_path / "img", "v1")
    with ScriptedServer(_image_registry(image, token)) as registry:
        result = run_pier(tmp_path / "home", "pull", f"{registry.host}/a/b:v1")
    _one_line_failure(result, fragment)


def test_a_deeply_nested_manifest_is_refused_without_recursion_error(tmp_path) -> None:
    fake = FakeRegistry(b'{"layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    try:
        result = run_pier(tmp_path / "home", "pull", f"{fake.host}/hostile/image:v1")
    finally:
        fake.close()
    _one_line_failure(result, "nested more than")


@pytest.mark.parametrize(
    "body, fragment",
    [
        (json.dumps({"manifests": [{"digest": ZERO, "size": 2, "platform": {"os": 5}}]}), "invalid platform"),
        (json.dumps({"manifests": [{"digest": ZERO, "size": 2, "platform": []}]}), "invalid platform"),
    ],
)
def test_an_index_with_a_malformed_platform_is_refused(body: str, fragment: str, tmp_path) -> None:
    fake = FakeRegistry(body.encode())
    try:
        result = run_pier(tmp_path / "home", "pull", f"{fake.host}/hostile/image:v1")
    finally:
        fake.close()
    _one_line_failure(result, fragment)


def test_an_index_naming_an_index_is_refused(tmp_path) -> None:
    inner = json.dumps({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}).encode()
    inner_digest = "sha256:" + hashlib.sha256(inner).hexdigest()
    platform = {"os": "linux", "architecture": Platform.host().architecture}
    outer = json.dumps({"manifests": [{"digest": inner_digest, "size": len(inner), "platform": platform}]})

    def script(request: Request) -> Answer:
        return Answer(
            200,
            [("Content-Type", "application/json")],
            inner if inner_digest in request.path else outer.encode(),
        )

    with ScriptedServer(script) as registry:
        result = run_pier(tmp_path / "home", "pull", f"{registry.host}/a/b:1")
    _one_line_failure(result, "names another index")


def test_a_non_ascii_retry_after_is_ignored_not_a_crash(tmp_path) -> None:
    busy = Answer(503, [("Retry-After", "²")], b'{"errors": [{"code": "UNAVAILABLE", "message": "busy"}]}')
    with ScriptedServer(lambda request: busy) as registry:
        result = run_pier(tmp_path / "home", "pull", f"{registry.host}/a/b:1")
    _one_line_failure(result, "503 UNAVAILABLE: busy")
    assert len(registry.requests) == 5  # retried with the usual backoff


def test_an_endless_error_body_is_read_only_to_its_cap_and_printed_on_one_line(tmp_path) -> None:
    def endless() -> Iterator[bytes]:
        yield b'{"errors": [{"code": "DENIED", "message": "no\\nway \\u001b[31m'
        while True:
            yield b" " * 65536

    forever = Answer(403, [("Content-Length", str(1 << 40))], endless())
    with ScriptedServer(lambda request: forever) as registry:
        started = time.monotonic()
        result = run_pier(tmp_path / "home", "pull", f"{registry.host}/a/b:1")
    _one_line_failure(result, "403 Forbidden")
    assert time.monotonic() - started < 30


def test_an_error_message_with_control_characters_is_printed_on_one_clean_line(tmp_path) -> None:
    body = json.dumps(
        {"errors": [{"code": "DENIED", "message": "no\nway \x1b[31mred\x07", "detail": "a\rb"}]}
    )
    with ScriptedServer(lambda request: Answer(403, body=body.encode())) as registry:
        result = run_pier(tmp_path / "home", "pull", f"{registry.host}/a/b:1")
    _one_line_failure(result, r"403 DENIED: no\nway \x1b[31mred\x07 (a\rb)")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr and "\r" not in result.stderr


def test_credentials_never_follow_the_registry_to_another_origin(tmp_path) -> None:
    """Neither a redirect nor an upload Location on another origin gets the registry's login."""
    image = build_image(tmp_path / "img", "v1")
    contents = {blob.digest: blob.read() for blob in (image.manifest, *image.blobs)}

    def cdn_script(request: Request) -> Answer:
        if request.method == "GET":
            return Answer(200, body=contents.get(request.path.rsplit("/", 1)[-1], image.manifest.read()))
        return Answer(404)

    with ScriptedServer(cdn_script) as cdn:
        elsewhere = f"http://localhost:{cdn.server.server_address[1]}"

        def registry_script(request: Request) -> Answer:
            if not request.headers.get("authorization"):
                return Answer(401, [("WWW-Authenticate", 'Basic realm="r"')])
            if request.method == "HEAD":
                return Answer(404)
            if request.method == "POST":
                return Answer(202, [("Location", f"{elsewhere}/upload/1")])
            return Answer(307, [("Location", f"{elsewhere}{request.path}")])

        with ScriptedServer(registry_script) as registry:
            env = _docker_config(tmp_path / "docker", registry.host)
            pulled = run_pier(tmp_path / "home", "pull", "-q", f"{registry.host}/a/b:v1", env=env)
            pushed = run_pier(tmp_path / "home", "push", f"{registry.host}/a/b:v1", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pushed.returncode == 1 and "Traceback" not in pushed.stderr  # the "upload" answers 404
    assert any(r.method == "PUT" for r in cdn.requests)  # the upload went to the Location given
    assert sum(1 for r in registry.requests if r.headers.get("authorization")) > 2
    assert [r.headers.get("authorization") for r in cdn.requests] == [None] * len(cdn.requests)


def _serve_config(config: bytes, size: int | None = None) -> Script:
    """A registry whose image has no layers and ``config`` as its config (declared ``size``)."""
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    body = manifest(config_digest=digest, size=len(config) if size is None else size)

    def script(request: Request) -> Answer:
        if "/manifests/" in request.path:
            return Answer(200, [("Content-Type", "application/vnd.oci.image.manifest.v1+json")], body)
        return Answer(200, body=config) if digest in request.path else Answer(404)

    return script


def test_a_deeply_nested_config_is_refused_in_one_line_where_it_is_read(tmp_path) -> None:
    with ScriptedServer(_serve_config(b"[" * 100_000 + b"]" * 100_000)) as registry:
        reference = f"{registry.host}/a/b:v1"
        pulled = run_pier(tmp_path / "home", "pull", "-q", reference)
    assert pulled.returncode == 0, pulled.stderr  # its digest is right: the bytes are what was named
    unpacked = run_pier(tmp_path / "home", "unpack", reference, str(tmp_path / "rootfs"))
    _one_line_failure(unpacked, "not usable JSON: nested more than")
    # The collector reads the configs of the images that stay: this one stays, its copy goes.
    assert run_pier(tmp_path / "home", "tag", reference, f"{reference}-copy").returncode == 0
    removed = run_pier(tmp_path / "home", "rmi", f"{reference}-copy")
    assert removed.returncode == 0 and "Traceback" not in removed.stderr, removed.stderr


def test_a_config_larger_than_any_real_one_is_not_downloaded(tmp_path) -> None:
    with ScriptedServer(_serve_config(b"{}", size=10**12)) as registry:
        result = run_pier(tmp_path / "home", "pull", f"{registry.host}/a/b:v1")
        assert not any("/blobs/" in r.path for r in registry.requests)
    _one_line_failure(result, "config is larger than 33554432 bytes")


@pytest.mark.parametrize("status", [301, 307, 308])
def test_a_redirected_upload_fails_in_one_line(status: int, tmp_path) -> None:
    """A streamed body cannot be sent twice: a redirect of a PUT is an error, not a crash."""
    image = build_image(tmp_path / "img", "v1")

    def script(request: Request) -> Answer:
        if request.method == "HEAD":
            return Answer(404)
        if request.method == "POST":
            return Answer(202, [("Location", "/v2/a/b/blobs/uploads/1")])
        return Answer(status, [("Location", "/v2/a/b/blobs/uploads/2")])

    with ScriptedServer(script) as registry:
        home = tmp_path / "home"
        store = ContentStore(home)
        for blob in (image.manifest, *image.blobs):
            store.put(blob.digest, blob.read())
        store.set_ref(f"{registry.host}/a/b", "v1", image.digest)
        result = run_pier(home, "push", f"{registry.host}/a/b:v1")
    _one_line_failure(result, "uploading blob sha256:")
    assert str(status) in result.stderr
