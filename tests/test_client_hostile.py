"""Hostile input to the client outside the unpacker: lying registries, crafted layouts, bad names."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from puller.content_store import ContentStore

from .helpers import run_pier
from .images import build_image

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
