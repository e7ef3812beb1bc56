"""`pier model push/pull/ls/inspect` and `pier artifact push/pull` against a real pier registry.

What is checked is what a data scientist relies on: the artifact is ModelPack as the spec
writes it, the files come back byte for byte with their modes, a re-push sends nothing,
a new version sends only what changed, a partial pull fetches only what matches, and an
interrupted pull does not fetch again what it finished.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from .helpers import run_pier, wait_until, write_htpasswd
from .models import make_model, tree
from .prometheus import metric

pytestmark = pytest.mark.slow  # the pier CLI as a process per step

WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
UPLOADS = "/v2/{name}/blobs/uploads/{uuid}"
BLOB_GET = "/v2/{name}/blobs/{digest}"


def counter(base: str, name: str, route: str) -> float:
    try:
        return metric(httpx.get(f"{base}/metrics").text, name, route=route)
    except AssertionError:  # nothing counted yet on this route
        return 0.0


def uploaded(base: str) -> float:
    return counter(base, "pier_http_received_bytes_total", UPLOADS)


def served(base: str) -> float:
    return counter(base, "pier_http_sent_bytes_total", BLOB_GET)


def manifest_of(registry, repository: str, tag: str) -> dict:
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    return httpx.get(f"{registry.url}/v2/{repository}/manifests/{tag}", headers=accept).json()


def blob_of(registry, repository: str, digest: str) -> bytes:
    return httpx.get(f"{registry.url}/v2/{repository}/blobs/{digest}", follow_redirects=True).content


def test_a_model_is_pushed_as_modelpack_and_pulled_back_byte_for_byte(registry, tmp_path) -> None:
    model = make_model(tmp_path / "model")
    reference = f"{registry.host}/models/tiny:v1"
    pushed = run_pier(
        tmp_path / "home",
        "model", "push", reference, str(model),
        "--name", "tiny", "--model-version", "1.0", "--family", "llama3", "--param-size", "8b",
        "--precision", "bf16", "--architecture", "transformer", "--model-format", "safetensors",
        "--licenses", "Apache-2.0", "--group", "data",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    manifest = manifest_of(registry, "models/tiny", "v1")
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    by_path = {layer["annotations"]["org.cncf.model.filepath"]: layer for layer in manifest["layers"]}
    roles = {
        path: layer["mediaType"].removeprefix("application/vnd.cncf.model.")
        for path, layer in by_path.items()
    }
    assert roles == {
        "model-00001.safetensors": "weight.v1.raw",
        "model-00002.safetensors": "weight.v1.raw",
        "config.json": "weight.config.v1.raw",
        "generation_config.json": "weight.config.v1.raw",
        "tokenizer/tokenizer.json": "weight.config.v1.raw",
        "README.md": "doc.v1.raw",
        "LICENSE": "doc.v1.raw",
        "inference.py": "code.v1.raw",
        "run.sh": "code.v1.raw",
        "data": "dataset.v1.tar",
    }
    weight = by_path["model-00001.safetensors"]
    assert weight["annotations"]["org.opencontainers.image.title"] == "model-00001.safetensors"
    metadata = json.loads(weight["annotations"]["org.cncf.model.file.metadata+json"])
    assert metadata["name"] == "model-00001.safetensors" and metadata["size"] == 3 << 20
    assert metadata["mode"] == 0o644 and metadata["typeflag"] == ord("0")
    # A raw weight's blob is the file itself: nothing compressed, nothing wrapped.
    assert (
        blob_of(registry, "models/tiny", weight["digest"]) == (model / "model-00001.safetensors").read_bytes()
    )
    config = json.loads(blob_of(registry, "models/tiny", manifest["config"]["digest"]))
    assert config["descriptor"]["name"] == "tiny" and config["descriptor"]["version"] == "1.0"
    assert config["descriptor"]["family"] == "llama3" and config["descriptor"]["licenses"] == ["Apache-2.0"]
    assert config["descriptor"]["createdAt"].endswith("Z")
    assert config["config"] == {
        "architecture": "transformer",
        "format": "safetensors",
        "paramSize": "8b",
        "precision": "bf16",
    }
    assert config["modelfs"] == {
        "type": "layers",
        "diffIds": [layer["digest"] for layer in manifest["layers"]],
    }

    out = tmp_path / "out"
    pulled = run_pier(tmp_path / "other-home", "model", "pull", reference, str(out))
    assert pulled.returncode == 0, pulled.stderr
    assert tree(out) == tree(model)
    assert not [p for p in out.rglob("*") if "pier" in p.name]  # no partial or staging file left

    listed = run_pier(tmp_path / "other-home", "model", "ls")
    assert listed.returncode == 0 and "models/tiny" in listed.stdout and "8b" in listed.stdout
    inspected = run_pier(tmp_path / "other-home", "model", "inspect", "--json", reference)
    document = json.loads(inspected.stdout)
    assert document["Model"] is True and document["Descriptor"]["name"] == "tiny"
    assert {f["path"] for f in document["Files"]} == set(by_path)
    shown = run_pier(tmp_path / "other-home", "inspect", reference)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["Manifest"]["artifactType"] == manifest["artifactType"]


def test_a_re_push_sends_nothing_and_a_new_version_sends_only_the_changed_file(registry, tmp_path) -> None:
    home = tmp_path / "home"
    model = make_model(tmp_path / "model")
    os.utime(
        model / "model-00001.safetensors", (1_700_000_000, 1_700_000_000)
    )  # changed long before the push
    first = run_pier(home, "model", "push", f"{registry.host}/models/versions:v1", str(model))
    assert first.returncode == 0, first.stderr

    before = uploaded(registry.url)
    again = run_pier(home, "model", "push", f"{registry.host}/models/versions:v1", str(model))
    assert again.returncode == 0, again.stderr
    assert uploaded(registry.url) == before  # not one blob byte sent
    assert "0B uploaded" in again.stdout
    assert "0B hashed" in again.stdout  # and nothing hashed: the file index knew every file
    assert manifest_of(registry, "models/versions", "v1")["layers"]

    # A new version in a copy of the directory (new inodes: the index does not know them).
    version2 = tmp_path / "model-v2"
    shutil.copytree(model, version2)
    changed = os.urandom(100_000)
    (version2 / "config.json").write_bytes(changed)
    before = uploaded(registry.url)
    second = run_pier(home, "model", "push", f"{registry.host}/models/versions:v2", str(version2))
    assert second.returncode == 0, second.stderr
    manifest = manifest_of(registry, "models/versions", "v2")
    assert uploaded(registry.url) - before == len(changed) + manifest["config"]["size"]

    # Pushed to another repository of the same registry: mounted, not sent.
    before = uploaded(registry.url)
    elsewhere = run_pier(home, "model", "push", f"{registry.host}/team/copy:v2", str(version2))
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "mounted" in elsewhere.stdout
    assert uploaded(registry.url) == before


def test_a_partial_pull_fetches_only_the_matching_files(registry, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=4 << 20)
    reference = f"{registry.host}/models/partial:v1"
    assert run_pier(tmp_path / "home", "model", "push", reference, str(model)).returncode == 0
    manifest = manifest_of(registry, "models/partial", "v1")
    wanted = {"tokenizer/tokenizer.json", "config.json", "generation_config.json"}
    sizes = {layer["annotations"]["org.cncf.model.filepath"]: layer["size"] for layer in manifest["layers"]}

    out = tmp_path / "out"
    before = served(registry.url)
    pulled = run_pier(
        tmp_path / "pull-home",
        "model",
        "pull",
        "--include",
        "tokenizer*",
        "--include",
        "*config.json",
        reference,
        str(out),
    )
    assert pulled.returncode == 0, pulled.stderr
    assert set(tree(out)) == wanted
    assert served(registry.url) - before == sum(sizes[p] for p in wanted) + manifest["config"]["size"]

    nothing = run_pier(
        tmp_path / "pull-home", "model", "pull", "--include", "*.gguf", reference, str(tmp_path / "none")
    )
    assert nothing.returncode == 1 and "no file" in nothing.stderr and "matches" in nothing.stderr


def test_a_pull_again_fetches_only_the_files_it_lacks(registry, tmp_path) -> None:
    model = make_model(tmp_path / "model")
    reference = f"{registry.host}/models/resume:v1"
    assert run_pier(tmp_path / "home", "model", "push", reference, str(model)).returncode == 0
    home, out = tmp_path / "pull-home", tmp_path / "out"
    assert run_pier(home, "model", "pull", reference, str(out)).returncode == 0
    (out / "model-00002.safetensors").unlink()  # as if the first pull had stopped before it
    (out / "README.md").write_text("edited\n")  # changed since: fetched again, not trusted
    manifest = manifest_of(registry, "models/resume", "v1")
    sizes = {layer["annotations"]["org.cncf.model.filepath"]: layer["size"] for layer in manifest["layers"]}

    before = served(registry.url)
    again = run_pier(home, "model", "pull", reference, str(out))
    assert again.returncode == 0, again.stderr
    assert tree(out) == tree(model)
    # The two files, the data group (a tar, unpacked again) and the config; nothing else.
    fetched = sizes["model-00002.safetensors"] + sizes["README.md"] + manifest["config"]["size"]
    assert served(registry.url) - before == fetched
    assert "already in place" in again.stdout


def test_large_files_come_in_parallel_ranges_and_verify(registry, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=9 << 20)
    reference = f"{registry.host}/models/ranged:v1"
    assert run_pier(tmp_path / "home", "model", "push", reference, str(model)).returncode == 0
    out = tmp_path / "out"
    pulled = run_pier(
        tmp_path / "pull-home",
        "model",
        "pull",
        reference,
        str(out),
        env={"PIER_PULL_RANGE_MIN": str(1 << 20), "PIER_PULL_RANGES": "4"},
    )
    assert pulled.returncode == 0, pulled.stderr
    assert tree(out) == tree(model)


def test_model_pull_refuses_an_image_and_artifact_pull_reads_any_artifact(registry, tmp_path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "sbom.json").write_text('{"packages": []}')
    (files / "notes.txt").write_text("signed off\n")
    home = tmp_path / "home"
    base = f"{registry.host}/models/generic"
    model = make_model(tmp_path / "model", weight_size=1000)
    assert run_pier(home, "model", "push", f"{base}:v1", str(model)).returncode == 0

    done = run_pier(
        home, "artifact", "push", f"{base}:sbom", "sbom.json:application/spdx+json", "notes.txt",
        "--artifact-type", "application/vnd.example.sbom", "--annotation", "org.example.kind=sbom",
        "--subject", "v1", cwd=files,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = manifest_of(registry, "models/generic", "sbom")
    assert manifest["artifactType"] == "application/vnd.example.sbom"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert manifest["annotations"] == {"org.example.kind": "sbom"}
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/spdx+json",
        "application/octet-stream",
    ]
    v1 = httpx.head(
        f"{registry.url}/v2/models/generic/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert manifest["subject"]["digest"] == v1.headers["docker-content-digest"]
    referrers = httpx.get(
        f"{registry.url}/v2/models/generic/referrers/{manifest['subject']['digest']}"
    ).json()
    assert [entry["artifactType"] for entry in referrers["manifests"]] == ["application/vnd.example.sbom"]

    out = tmp_path / "out"
    assert run_pier(tmp_path / "h2", "artifact", "pull", f"{base}:sbom", str(out)).returncode == 0
    assert tree(out) == tree(files)
    refused = run_pier(tmp_path / "h2", "model", "pull", f"{base}:sbom", str(tmp_path / "out2"))
    assert refused.returncode == 1 and "not a ModelPack model" in refused.stderr
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_bad_input_is_one_clear_line(registry, tmp_path) -> None:
    home = tmp_path / "home"
    model = make_model(tmp_path / "model", weight_size=1000)
    (model / "link").symlink_to("/etc/passwd")
    linked = run_pier(home, "model", "push", f"{registry.host}/models/bad:v1", str(model))
    assert (
        linked.returncode == 1 and "link is a symlink" in linked.stderr and "Traceback" not in linked.stderr
    )
    excluded = run_pier(
        home, "model", "push", f"{registry.host}/models/bad:v1", str(model), "--exclude", "link"
    )
    assert excluded.returncode == 0, excluded.stderr
    size = run_pier(
        home,
        "model",
        "push",
        f"{registry.host}/models/bad:v2",
        str(model),
        "--exclude",
        "link",
        "--param-size",
        "lots",
    )
    assert size.returncode == 1 and "paramSize" in size.stderr
    missing = run_pier(home, "model", "push", f"{registry.host}/models/bad:v3", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "is not a directory" in missing.stderr
    (model / "modelpack.json").write_text('{"name": "from-file", "paramSize": "7b", "colour": "blue"}')
    unknown = run_pier(
        home, "model", "push", f"{registry.host}/models/bad:v4", str(model), "--exclude", "link"
    )
    assert unknown.returncode == 1 and "'colour'" in unknown.stderr


class CuttingProxy:
    """A registry's front that drops the first GET of one blob halfway, then serves what is
    asked, ranges included: a connection lost in the middle of a multi-GB file."""

    def __init__(self, upstream: str, digest: str, cut_at: int, stall: bool = False) -> None:
        """``stall``: after ``cut_at`` bytes, hold the connection open instead of dropping it."""
        self.upstream, self.digest, self.cut_at, self.stall = upstream, digest, cut_at, stall
        self.released = threading.Event()
        self.ranges: list[str | None] = []  # the Range of every GET of the blob
        self.blobs: list[str] = []  # every blob asked for
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                answer = httpx.get(f"{proxy.upstream}{self.path}", headers=headers)
                body = answer.content
                if "/blobs/" in self.path:
                    proxy.blobs.append(self.path.rsplit("/", 1)[-1])
                first_try = False
                if proxy.digest in self.path:
                    proxy.ranges.append(self.headers.get("range"))
                    first_try = len(proxy.ranges) == 1
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if first_try:
                    self.wfile.write(body[: proxy.cut_at])
                    self.wfile.flush()
                    if proxy.stall:
                        proxy.released.wait(60)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def pushed_weights(registry, tmp_path: Path, repository: str, model: Path) -> dict:
    """Push ``model`` as ``repository:v1``; the descriptor of its first weights file."""
    pushed = run_pier(tmp_path / "home", "model", "push", f"{registry.host}/{repository}:v1", str(model))
    assert pushed.returncode == 0, pushed.stderr
    return next(
        layer
        for layer in manifest_of(registry, repository, "v1")["layers"]
        if layer["annotations"]["org.cncf.model.filepath"] == "model-00001.safetensors"
    )


def test_a_dropped_connection_resumes_where_it_broke_off(registry, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=6 << 20)
    weight = pushed_weights(registry, tmp_path, "models/dropped", model)
    cut = (2 << 20) + 12345
    proxy = CuttingProxy(registry.url, weight["digest"], cut)
    try:
        out = tmp_path / "out"
        pulled = run_pier(
            tmp_path / "pull-home", "model", "pull", f"{proxy.host}/models/dropped:v1", str(out)
        )
    finally:
        proxy.close()
    assert pulled.returncode == 0, pulled.stderr
    assert tree(out) == tree(model)
    assert proxy.ranges[0] is None and len(proxy.ranges) == 2
    resumed_at = int((proxy.ranges[1] or "").removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= cut  # what had arrived was kept, not fetched again


def test_models_through_a_registry_that_wants_a_login(start_registry, tmp_path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"ada": "lovelace"})
    server = start_registry("--htpasswd", str(htpasswd))
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    home = tmp_path / "home"
    model = make_model(tmp_path / "model", weight_size=2 << 20)
    refused = run_pier(home, "model", "push", f"{server.host}/ada/model:v1", str(model), env=env)
    assert refused.returncode == 1 and "requires a login" in refused.stderr, refused.stderr
    assert (
        run_pier(
            home, "login", server.host, "-u", "ada", "--password-stdin", env=env, stdin="lovelace\n"
        ).returncode
        == 0
    )
    pushed = run_pier(home, "model", "push", f"{server.host}/ada/model:v1", str(model), env=env)
    assert pushed.returncode == 0, pushed.stderr
    out = tmp_path / "out"
    pulled = run_pier(tmp_path / "home2", "model", "pull", f"{server.host}/ada/model:v1", str(out), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert tree(out) == tree(model)


def test_without_the_raw_path_httpx_resumes_the_same_way(registry, tmp_path, monkeypatch) -> None:
    """Where a body cannot be read off the socket (a challenge, a redirect, a proxy), httpx
    reads it: the same resume, the same checks."""
    from puller.artifact.fetch import fetch_raw
    from puller.reference import parse_reference
    from puller.transfer.pull import Remote
    from puller.transfer.transport import Transport

    model = make_model(tmp_path / "model", weight_size=3 << 20)
    weight = pushed_weights(registry, tmp_path, "models/httpx", model)
    proxy = CuttingProxy(registry.url, weight["digest"], (1 << 20) + 99)
    monkeypatch.setattr(Remote, "raw_blob", lambda self, digest, headers=None: None)
    transport = Transport(proxy.host)
    (tmp_path / "out").mkdir()
    try:
        remote = Remote(transport, parse_reference(f"{proxy.host}/models/httpx:v1"))
        fetch_raw(remote, weight, tmp_path / "out", "w.bin", lambda done: None, parts=1)
    finally:
        transport.close()
        proxy.close()
    assert (tmp_path / "out" / "w.bin").read_bytes() == (model / "model-00001.safetensors").read_bytes()
    assert proxy.ranges[0] is None and proxy.ranges[1] is not None and len(proxy.ranges) == 2


def _size(path: Path) -> int:
    """A file's size, 0 once it is gone (a partial file renamed into place meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.serial  # the small files must be in the file index, written every second, by the kill
def test_a_killed_pull_resumes_inside_the_file_it_was_writing(registry, tmp_path) -> None:
    model = make_model(tmp_path / "model", weight_size=6 << 20)
    weight = pushed_weights(registry, tmp_path, "models/killed", model)
    out, home = tmp_path / "out", tmp_path / "pull-home"
    # Past 4 MiB: the other weights file is 3 MiB, so only this one's partial file gets there.
    stalling = CuttingProxy(registry.url, weight["digest"], (4 << 20) + 5, stall=True)
    command = [sys.executable, "-m", "puller", "model", "pull", f"{stalling.host}/models/killed:v1", str(out)]
    process = subprocess.Popen(command, env={**os.environ, "PIER_HOME": str(home)}, stderr=subprocess.PIPE)
    try:
        partial = wait_until(
            lambda: next((p for p in out.glob(".*.pier-partial") if _size(p) >= 4 << 20), None),
            timeout=30,
            what="4 MiB of the weights in their partial file",
        )
        index = home / "artifacts" / "file-index.json"  # written down every second while pulling
        wait_until(
            lambda: index.exists() and str(out / "model-00002.safetensors") in index.read_text(),
            timeout=30,
            what="the finished files in the file index",
        )
        process.kill()  # as a power cut would: no cleanup
        process.wait(10)
    finally:
        stalling.close()
    assert not (out / "model-00001.safetensors").exists()
    assert partial is not None
    kept = partial.stat().st_size

    counting = CuttingProxy(registry.url, weight["digest"], cut_at=1 << 40)  # cuts nothing
    try:
        again = run_pier(home, "model", "pull", f"{counting.host}/models/killed:v1", str(out))
    finally:
        counting.close()
    assert again.returncode == 0, again.stderr
    assert tree(out) == tree(model) and not list(out.glob(".*.pier-partial"))
    assert counting.ranges == [f"bytes={kept}-"]  # only the rest of the file was asked for
    manifest = manifest_of(registry, "models/killed", "v1")
    # and nothing the killed pull had finished: the other files came before the kill
    assert set(counting.blobs) <= {weight["digest"], manifest["config"]["digest"]}
