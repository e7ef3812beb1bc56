"""The mirror: pier as a pull-through cache of a real upstream registry on loopback.

The upstream is pier with token auth (anonymous pulls of ``library/*`` as on Docker Hub,
``alice/*`` only with her login), behind a ``Gate`` that counts requests and can answer
429/500 itself; and Debian's ``docker-registry`` as a plain upstream.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .gate import Gate
from .helpers import push_blob, push_index, push_manifest, run_pier, tmpfs, wait_until, write_htpasswd
from .images import OCI_MANIFEST, Blob, Image, build_image, build_index, sha256, write_blob
from .maintenance import run_storage_command
from .oci import descriptor
from .prometheus import metric
from .scripted import Answer, Request, ScriptedServer
from .servers import PierServer, serve_refused
from .skopeo import Skopeo
from .slow_link import SlowLink
from .storeview import blob_data_path
from .tokens import write_signing_key

# slow: an upstream, a mirror and pier pulls per test; TTLs must pass
pytestmark = [pytest.mark.backends("filesystem", "s3"), pytest.mark.slow]

ACL = """
[[rule]]
account = "anonymous"
repository = "library/*"
actions = ["pull"]

[[rule]]
account = "*"
repository = "*"
actions = ["*"]
"""
ALICE = ("alice", "wonderland")
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


class Upstream:
    """pier demanding Bearer tokens from its own token server, seeded over HTTP as alice."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        htpasswd = write_htpasswd(folder / "htpasswd", dict([ALICE]))
        acl = folder / "acl.toml"
        acl.write_text(ACL)
        key, _ = write_signing_key(folder / "keys")
        self.server = PierServer(
            folder / "data", "--htpasswd", str(htpasswd), "--acl", str(acl), "--token-key", str(key)
        )

    def push(self, repo: str, image: Image, tag: str) -> None:
        answer = httpx.get(
            f"{self.server.url}/auth/token",
            params={"service": "pier", "scope": f"repository:{repo}:pull,push"},
            auth=ALICE,
        )
        headers = {"Authorization": f"Bearer {answer.json()['token']}"}
        for blob in image.blobs:
            push_blob(self.server.url, repo, blob, headers)
        push_manifest(self.server.url, repo, tag, image.manifest, headers)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = Upstream(tmp_path / "upstream")
    up.server.start()
    yield up
    up.server.stop()


@pytest.fixture
def gate(upstream: Upstream) -> Iterator[Gate]:
    with Gate(upstream.server.url) as front:
        yield front


@pytest.fixture
def skopeo_for(tmp_path: Path):
    """skopeo, isolated, aimed at a given server."""
    executable = shutil.which("skopeo")
    if executable is None:
        pytest.fail("skopeo is not installed (Debian: apt-get install skopeo); these tests need it")

    def make(server: PierServer) -> Skopeo:
        home = tmp_path / f"skopeo-{server.port}"
        home.mkdir()
        return Skopeo(executable, home, server)

    return make


@pytest.fixture
def image(tmp_path: Path, upstream: Upstream) -> Image:
    built = build_image(tmp_path / "image", "v1")
    upstream.push("library/app", built, "v1")
    return built


def mirror_args(gate: Gate, *extra: str, ttl: str = "5m") -> list[str]:
    return ["--proxy", f"up={gate.url}", "--proxy-ttl", ttl, "--proxy-timeout", "5s", *extra]


def get(server: PierServer, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers={"accept": MANIFEST_TYPES, **headers}, timeout=30)


def error_code(response: httpx.Response) -> str:
    return response.json()["errors"][0]["code"]


def assert_pulls(pier_home: Path, reference: str, image: Image) -> None:
    done = run_pier(pier_home, "pull", reference)
    assert done.returncode == 0, done.stderr
    listed = run_pier(pier_home, "images")
    assert image.digest[7:19] in listed.stdout, listed.stdout


# -- pulling through, and from the cache alone ------------------------------------------


def test_first_pull_fills_the_cache_and_the_second_needs_no_upstream(
    start_registry, upstream: Upstream, gate: Gate, image: Image, skopeo_for, tmp_path: Path
) -> None:
    mirror = start_registry(*mirror_args(gate, ttl="0s"))  # every tag pull asks upstream
    skopeo = skopeo_for(mirror)
    skopeo.pull("up/library/app", "v1", tmp_path / "first")
    assert (tmp_path / "first" / "index.json").exists()
    first = json.loads((tmp_path / "first" / "index.json").read_text())["manifests"][0]["digest"]
    assert first == image.digest
    assert_pulls(tmp_path / "home1", f"{mirror.host}/up/library/app:v1", image)
    assert gate.count("GET", f"/blobs/{image.layers[0].digest}") == 1  # filled by skopeo, hit by pier

    upstream.server.stop()
    skopeo.pull("up/library/app", "v1", tmp_path / "second")
    assert_pulls(tmp_path / "home2", f"{mirror.host}/up/library/app:v1", image)
    by_digest = get(mirror, f"/v2/up/library/app/manifests/{image.digest}")
    assert by_digest.status_code == 200 and by_digest.content == image.manifest.read()
    assert "serving up/library/app:v1 from the cache" in mirror.log()
    never_seen = get(mirror, "/v2/up/library/app/manifests/v2")
    assert never_seen.status_code == 503 and error_code(never_seen) == "UNAVAILABLE"
    assert gate.url in never_seen.json()["errors"][0]["detail"]
    catalog = get(mirror, "/v2/_catalog").json()["repositories"]
    assert "up/library/app" in catalog
    metrics = httpx.get(f"{mirror.url}/metrics").text
    assert metric(metrics, "pier_mirror_requests_total", kind="blob", result="miss") == len(image.blobs)
    assert metric(metrics, "pier_mirror_requests_total", kind="blob", result="hit") >= len(image.blobs)
    assert metric(metrics, "pier_mirror_requests_total", kind="manifest", result="stale") >= 1
    assert metric(metrics, "pier_mirror_upstream_errors_total", upstream="up", reason="unreachable") >= 1


def test_bare_names_are_the_default_upstreams_and_local_repositories_stay_pushable(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    mirror = start_registry("--proxy", gate.url, "--proxy-timeout", "5s")
    prefix = "127.0.0.1"  # a bare URL's prefix is its host name
    bare = get(mirror, "/v2/library/app/manifests/v1")
    assert bare.status_code == 200 and bare.headers["docker-content-digest"] == image.digest
    # the same cache through the prefixed name: no second upstream fetch
    assert get(mirror, f"/v2/{prefix}/library/app/manifests/{image.digest}").status_code == 200
    assert gate.count("GET", f"/manifests/{image.digest}") + gate.count("GET", "/manifests/v1") == 1
    # a repository pushed here is ordinary, and shadows the upstream's of the same name
    local = build_image(tmp_path / "local", "mine")
    for blob in local.blobs:
        push_blob(mirror.url, "team/model", blob)
    push_manifest(mirror.url, "team/model", "mine", local.manifest)
    assert get(mirror, "/v2/team/model/manifests/mine").headers["docker-content-digest"] == local.digest
    refused = httpx.post(f"{mirror.url}/v2/{prefix}/library/app/blobs/uploads/")
    assert refused.status_code == 403 and error_code(refused) == "DENIED"
    put = httpx.put(
        f"{mirror.url}/v2/{prefix}/library/app/manifests/v9",
        content=local.manifest.read(),
        headers={"content-type": local.manifest.media_type},
    )
    assert put.status_code == 403 and "read-only" in put.text
    deleted = httpx.delete(f"{mirror.url}/v2/{prefix}/library/app/manifests/v1")
    assert deleted.status_code == 403
    assert get(mirror, f"/v2/{prefix}/library/app/manifests/v1").status_code == 200


def test_a_bare_name_is_pulled_only_by_who_may_pull_the_name_it_maps_to(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    # Both names reach the same cache: a grant on the bare name alone must not open it.
    users = {"bob": "bob-secret", "carol": "carol-secret"}
    htpasswd = write_htpasswd(tmp_path / "mirror-htpasswd", users)
    acl = tmp_path / "mirror-acl.toml"
    acl.write_text(
        '[[rule]]\naccount = "bob"\nrepository = "library/*"\nactions = ["pull"]\n\n'
        '[[rule]]\naccount = "carol"\nrepository = "library/*"\nactions = ["pull"]\n\n'
        '[[rule]]\naccount = "carol"\nrepository = "127.0.0.1/library/*"\nactions = ["pull"]\n'
    )
    mirror = start_registry(
        "--proxy", gate.url, "--proxy-timeout", "5s", "--htpasswd", str(htpasswd), "--acl", str(acl)
    )
    path = "/v2/library/app/manifests/v1"

    def basic(user: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{users[user]}".encode()).decode()

    refused = get(mirror, path, authorization=basic("bob"))
    assert refused.status_code == 403 and error_code(refused) == "DENIED"
    assert gate.count("GET", "/manifests/v1") == 0  # refused before anything was fetched
    assert get(mirror, f"/v2/127.0.0.1{path[3:]}", authorization=basic("bob")).status_code == 403
    allowed = get(mirror, path, authorization=basic("carol"))
    assert allowed.status_code == 200 and allowed.headers["docker-content-digest"] == image.digest
    assert get(mirror, path).status_code == 401  # and nobody anonymous


def test_private_upstream_repositories_need_the_configured_login(
    start_registry, upstream: Upstream, gate: Gate, tmp_path: Path
) -> None:
    private = build_image(tmp_path / "private", "v1")
    upstream.push("alice/secret", private, "v1")
    anonymous = start_registry(*mirror_args(gate))
    refused = get(anonymous, "/v2/up/alice/secret/manifests/v1")
    assert refused.status_code == 403 and error_code(refused) == "DENIED"
    assert gate.url in refused.text
    auth_file = tmp_path / "config.json"
    login = base64.b64encode(":".join(ALICE).encode()).decode()
    auth_file.write_text(json.dumps({"auths": {gate.url.removeprefix("http://"): {"auth": login}}}))
    mirror = start_registry(*mirror_args(gate, "--proxy-auth-file", str(auth_file)))
    assert_pulls(tmp_path / "home", f"{mirror.host}/up/alice/secret:v1", private)
    assert "wonderland" not in mirror.log()


# -- tags, freshness and failing upstreams ------------------------------------------------


@pytest.mark.serial  # a push must fit in the 2 s TTL
def test_a_moved_tag_is_picked_up_after_the_ttl_with_a_head(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    mirror = start_registry(*mirror_args(gate, ttl="2s"))
    assert get(mirror, "/v2/up/library/app/manifests/v1").headers["docker-content-digest"] == image.digest
    gets = gate.count("GET", "/manifests/v1")
    time.sleep(2.2)  # sleep-ok: the 2 s TTL must pass
    assert get(mirror, "/v2/up/library/app/manifests/v1").headers["docker-content-digest"] == image.digest
    assert gate.count("HEAD", "/manifests/v1") == 1 and gate.count("GET", "/manifests/v1") == gets

    moved = build_image(tmp_path / "moved", "v1")
    upstream.push("library/app", moved, "v1")
    fresh = get(mirror, "/v2/up/library/app/manifests/v1")
    assert fresh.headers["docker-content-digest"] == image.digest  # still within the new TTL
    time.sleep(2.2)  # sleep-ok: the renewed 2 s TTL must pass
    assert get(mirror, "/v2/up/library/app/manifests/v1").headers["docker-content-digest"] == moved.digest
    assert_pulls(tmp_path / "home", f"{mirror.host}/up/library/app:v1", moved)


@pytest.mark.parametrize("status", ["429", "500"])
def test_a_refusing_upstream_is_covered_by_the_cache(
    start_registry, gate: Gate, image: Image, tmp_path: Path, status: str
) -> None:
    mirror = start_registry(*mirror_args(gate, ttl="0s"))
    assert_pulls(tmp_path / "home1", f"{mirror.host}/up/library/app:v1", image)
    gate.mode = status
    stale = get(mirror, "/v2/up/library/app/manifests/v1")
    assert stale.status_code == 200 and stale.headers["docker-content-digest"] == image.digest
    assert_pulls(tmp_path / "home2", f"{mirror.host}/up/library/app:v1", image)
    missing = get(mirror, "/v2/up/library/other/manifests/v1")
    expected = (429, "TOOMANYREQUESTS") if status == "429" else (503, "UNAVAILABLE")
    assert (missing.status_code, error_code(missing)) == expected
    assert f"answered {status}" in missing.json()["errors"][0]["detail"] and gate.url in missing.text
    assert "serving up/library/app:v1 from the cache" in mirror.log()


# -- blobs ---------------------------------------------------------------------------------


def test_a_corrupt_upstream_blob_never_reaches_a_client_whole_and_is_not_cached(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    mirror = start_registry(*mirror_args(gate))
    layer = image.layers[-1]
    stored = upstream.server.root / blob_data_path(layer.digest)
    good = stored.read_bytes()
    stored.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])  # same size, wrong bytes
    received = bytearray()
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("GET", f"{mirror.url}/v2/up/library/app/blobs/{layer.digest}", timeout=30) as answer,
    ):
        assert answer.status_code == 200
        for chunk in answer.iter_raw():
            received += chunk
    assert len(received) < len(good)  # cut short before the last byte
    assert not mirror.storage.exists(blob_data_path(layer.digest))
    assert "arrived as" in mirror.log()
    failed = run_pier(tmp_path / "home", "pull", f"{mirror.host}/up/library/app:v1")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr

    stored.write_bytes(good)  # the upstream is repaired: the next pull fills the cache
    answer = httpx.get(f"{mirror.url}/v2/up/library/app/blobs/{layer.digest}", timeout=30)
    assert answer.status_code == 200 and sha256(answer.content) == layer.digest
    # On S3 the upload ends after the client's last byte (the blob is spooled locally first).
    wait_until(lambda: mirror.storage.exists(blob_data_path(layer.digest)), what="the blob cached")
    assert mirror.storage.read(blob_data_path(layer.digest)) == good


def test_concurrent_pulls_of_one_blob_share_one_upstream_download(
    start_registry, upstream: Upstream, gate: Gate, tmp_path: Path
) -> None:
    big = write_blob(tmp_path / "big", "application/octet-stream", bytes(range(256)) * 40_000)  # ~10 MB
    image = build_image(tmp_path / "image", "v1")
    for blob in (*image.blobs, big):
        push_blob(upstream.server.url, "library/app", blob, _alice_token(upstream))
    mirror = start_registry(*mirror_args(gate))
    gate.blob_delay = 1.0  # every client arrives before the first byte
    results: list[bytes] = []

    def pull() -> None:
        answer = httpx.get(f"{mirror.url}/v2/up/library/app/blobs/{big.digest}", timeout=60)
        assert answer.status_code == 200
        results.append(answer.content)

    threads = [threading.Thread(target=pull) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 5 and all(sha256(body) == big.digest for body in results)
    assert gate.count("GET", f"/blobs/{big.digest}") == 1
    ranged = httpx.get(
        f"{mirror.url}/v2/up/library/app/blobs/{big.digest}", headers={"range": "bytes=10-19"}, timeout=30
    )
    assert ranged.status_code == 206 and ranged.content == big.read()[10:20]


def _alice_token(upstream: Upstream, repo: str = "library/app") -> dict[str, str]:
    answer = httpx.get(
        f"{upstream.server.url}/auth/token",
        params={"service": "pier", "scope": f"repository:{repo}:pull,push"},
        auth=ALICE,
    )
    return {"Authorization": f"Bearer {answer.json()['token']}"}


# -- distribution upstream, maintenance, settings -------------------------------------------


def test_distribution_as_a_plain_upstream_then_gc_and_fsck_of_the_cache(
    start_registry, distribution: str, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "image", "v1")
    for blob in image.blobs:
        push_blob(f"http://{distribution}", "tools/jq", blob)
    push_manifest(f"http://{distribution}", "tools/jq", "v1", image.manifest)
    mirror = start_registry("--proxy", f"dist=http://{distribution}")
    assert_pulls(tmp_path / "home", f"{mirror.host}/dist/tools/jq:v1", image)
    mirror.stop()
    for command in (["gc", "--grace", "0s"], ["fsck"]):
        done = run_storage_command(mirror.storage, *command)
        assert done.returncode == 0, done.stderr
    assert "0 blobs (0B) freed" in run_storage_command(mirror.storage, "gc", "--grace", "0s").stdout
    for blob in image.blobs:
        assert mirror.storage.exists(blob_data_path(blob.digest))


@pytest.mark.parametrize(
    "proxy, message",
    [
        ("ftp://example.org", "not an http(s) URL"),
        ("https://a.example,https://b.example", "only one upstream can serve bare names"),
        ("Bad_Prefix=https://a.example", "not a repository prefix"),
        ("x=https://a.example,x=https://b.example", "share a prefix"),
    ],
)
def test_bad_proxy_settings_are_refused_in_one_line(tmp_path: Path, proxy: str, message: str) -> None:
    done = serve_refused(tmp_path, "--proxy", proxy)
    assert done.returncode == 2 and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_the_cache_evicts_the_least_recently_pulled_and_keeps_what_local_repositories_need(
    start_registry, upstream: Upstream, gate: Gate, tmp_path: Path
) -> None:
    old, new = (build_image(tmp_path / name, "v1") for name in ("old", "new"))
    upstream.push("library/old", old, "v1")
    upstream.push("library/new", new, "v1")
    base = old.layers[0].size + old.layers[2].size  # busybox and the motd layer: shared by both
    sizes = {image.digest: sum(b.size for b in image.blobs) + image.manifest.size for image in (old, new)}
    limit = sizes[new.digest] + (sizes[old.digest] - base) // 2  # room for new, not for both
    mirror = start_registry(*mirror_args(gate, "--proxy-cache-size", str(limit)))
    # a local image shares old's config: that blob must survive old's eviction
    keep = write_blob(tmp_path / "keep", OCI_MANIFEST, _manifest(old.config, old.layers[2]))
    push_blob(mirror.url, "team/keep", old.config)
    push_blob(mirror.url, "team/keep", old.layers[2])
    push_manifest(mirror.url, "team/keep", "v1", keep)

    assert_pulls(tmp_path / "home1", f"{mirror.host}/up/library/old:v1", old)
    time.sleep(1.1)  # sleep-ok: the clock must move; mtimes of the pull markers are the order
    assert_pulls(tmp_path / "home2", f"{mirror.host}/up/library/new:v1", new)
    evicted = old.layers[1]  # old's own big layer
    wait_until(
        lambda: not mirror.storage.exists(blob_data_path(evicted.digest)),
        20,
        what=lambda: f"the eviction of {evicted.digest}; log:\n{mirror.log()}",
    )
    assert not mirror.storage.exists(blob_data_path(evicted.digest)), mirror.log()
    for kept in (*new.blobs, old.config, old.layers[0]):
        assert mirror.storage.exists(blob_data_path(kept.digest))
    assert not mirror.storage.exists("repositories/up/library/old/_manifests/tags/v1/current/link")
    assert get(mirror, "/v2/team/keep/manifests/v1").status_code == 200
    # evicted is not lost: the next pull fetches it again
    fetched = gate.count("GET", f"/blobs/{evicted.digest}")
    assert_pulls(tmp_path / "home3", f"{mirror.host}/up/library/old:v1", old)
    assert gate.count("GET", f"/blobs/{evicted.digest}") == fetched + 1


def _manifest(config: Blob, layer: Blob) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    return json.dumps(document).encode()


@pytest.mark.serial  # first byte within a third of the time
def test_the_first_client_gets_bytes_before_the_upstream_is_done(
    start_registry, upstream: Upstream, gate: Gate, tmp_path: Path
) -> None:
    big = write_blob(tmp_path / "big", "application/octet-stream", os.urandom(2 * 1024 * 1024))
    push_blob(upstream.server.url, "library/app", big, _alice_token(upstream))
    mirror = start_registry(*mirror_args(gate))
    gate.blob_pace = 0.05  # 32 pieces of 64 KiB: the upstream takes about 1.6 s
    started = time.monotonic()
    received, first_byte = bytearray(), None
    with httpx.stream("GET", f"{mirror.url}/v2/up/library/app/blobs/{big.digest}", timeout=30) as answer:
        assert answer.status_code == 200 and answer.headers["content-length"] == str(big.size)
        for chunk in answer.iter_raw():
            first_byte = first_byte or time.monotonic() - started
            received += chunk
    total = time.monotonic() - started
    assert sha256(bytes(received)) == big.digest
    assert first_byte is not None
    assert total > 1.4 and first_byte < total / 3, (first_byte, total)


def test_a_mirror_killed_mid_download_leaves_no_half_blob_and_the_next_start_fetches_it_again(
    start_registry, upstream: Upstream, gate: Gate, tmp_path: Path
) -> None:
    """The cache is a temporary file (on S3: a multipart upload) until the blob is verified,
    so a crash leaves nothing a reader could take for the blob."""
    big = write_blob(tmp_path / "big", "application/octet-stream", os.urandom(12 * 1024 * 1024))
    push_blob(upstream.server.url, "library/app", big, _alice_token(upstream))
    mirror = start_registry(*mirror_args(gate))
    gate.blob_pace = 0.01  # 192 pieces of 64 KiB: about 2 s
    url = f"{mirror.url}/v2/up/library/app/blobs/{big.digest}"
    received = bytearray()
    with httpx.stream("GET", url, timeout=30) as answer:
        for chunk in answer.iter_raw():
            received += chunk
            if len(received) >= 9 * 1024 * 1024:  # past the first 8 MiB part of an S3 upload
                break
        mirror.kill()
    assert bytes(received) == big.read()[: len(received)]
    assert [path for path in mirror.storage.files("blobs") if path.endswith(f"{big.digest[7:]}/data")] == []

    gate.blob_pace = 0.0
    mirror.start()
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200 and sha256(answer.content) == big.digest
    assert gate.count("GET", f"/blobs/{big.digest}") == 2
    wait_until(lambda: mirror.storage.exists(blob_data_path(big.digest)), what="the blob cached")
    assert mirror.storage.read(blob_data_path(big.digest)) == big.read()


@pytest.mark.backends("s3")
def test_on_s3_the_first_client_is_not_held_to_the_uploads_pace(
    start_registry, upstream: Upstream, gate: Gate, seaweed, tmp_path: Path
) -> None:
    """A remote cache is written from a local spool: the client gets the blob at the
    upstream's speed, and the upload follows at the store's."""
    big = write_blob(tmp_path / "big", "application/octet-stream", os.urandom(24 * 1024 * 1024))
    push_blob(upstream.server.url, "library/app", big, _alice_token(upstream))
    with SlowLink(seaweed.endpoint, rate=3e6) as link:  # the 24 MiB take 8.4 s to upload
        mirror = start_registry(*mirror_args(gate), env={"AWS_ENDPOINT_URL": link.url})
        started = time.monotonic()
        answer = httpx.get(f"{mirror.url}/v2/up/library/app/blobs/{big.digest}", timeout=60)
        took = time.monotonic() - started
        assert answer.status_code == 200 and sha256(answer.content) == big.digest
        assert took < 5.5, took
        assert not mirror.storage.exists(blob_data_path(big.digest))  # still on its way up
        wait_until(lambda: mirror.storage.exists(blob_data_path(big.digest)), 60, what="the upload")
        assert mirror.storage.read(blob_data_path(big.digest)) == big.read()


@pytest.mark.backends("s3")
def test_on_s3_a_blob_too_large_for_the_spools_disk_goes_straight_to_the_store(
    start_registry, upstream: Upstream, gate: Gate, tmp_path: Path
) -> None:
    """Spooling is for speed, never a reason to fail: a blob that does not fit in $TMPDIR
    (a 40 MiB tmpfs here) is uploaded as it arrives, and its client still gets all of it."""
    with tmpfs(tmp_path / "spool", "size=40m") as spool_disk:
        big = write_blob(tmp_path / "big", "application/octet-stream", os.urandom(64 * 1024 * 1024))
        push_blob(upstream.server.url, "library/app", big, _alice_token(upstream))
        mirror = start_registry(*mirror_args(gate), env={"TMPDIR": str(spool_disk)})
        answer = httpx.get(f"{mirror.url}/v2/up/library/app/blobs/{big.digest}", timeout=120)
        assert answer.status_code == 200 and sha256(answer.content) == big.digest
        wait_until(lambda: mirror.storage.exists(blob_data_path(big.digest)), 60, what="the upload")
        assert mirror.storage.read(blob_data_path(big.digest)) == big.read()
        assert "spool" not in mirror.log()


def test_an_index_is_cached_with_the_children_that_were_pulled(
    start_registry, upstream: Upstream, gate: Gate, tmp_path: Path
) -> None:
    index = build_index(tmp_path / "multi", "v1")
    token = _alice_token(upstream, "library/multi")
    push_index(upstream.server.url, "library/multi", index, token)
    mirror = start_registry(*mirror_args(gate))
    amd64, arm64 = index.image("amd64"), index.image("arm64")
    done = run_pier(
        tmp_path / "home", "pull", "--platform", "linux/arm64", f"{mirror.host}/up/library/multi:v1"
    )
    assert done.returncode == 0, done.stderr
    revisions = "repositories/up/library/multi/_manifests/revisions/sha256"
    cached = {path.split("/")[-2] for path in mirror.storage.files(revisions)}
    assert cached == {index.digest[7:], arm64.digest[7:]}
    assert not mirror.storage.exists(blob_data_path(amd64.config.digest))
    gate.mode = "500"  # what was pulled is served without the upstream
    again = run_pier(
        tmp_path / "home2", "pull", "--platform", "linux/arm64", f"{mirror.host}/up/library/multi:v1"
    )
    assert again.returncode == 0, again.stderr
    other = run_pier(
        tmp_path / "home3", "pull", "--platform", "linux/amd64", f"{mirror.host}/up/library/multi:v1"
    )
    assert other.returncode != 0 and "answered 500" in other.stderr and "Traceback" not in other.stderr


def test_tag_lists_come_from_upstream_or_from_the_cache_when_it_fails(
    start_registry, upstream: Upstream, gate: Gate, image: Image, skopeo_for
) -> None:
    upstream.push("library/app", image, "latest")
    mirror = start_registry(*mirror_args(gate))
    assert get(mirror, "/v2/up/library/app/manifests/v1").status_code == 200
    listed = skopeo_for(mirror).json(
        "list-tags", "--tls-verify=false", f"docker://{mirror.host}/up/library/app"
    )
    assert listed["Tags"] == ["latest", "v1"]
    paged = get(mirror, "/v2/up/library/app/tags/list?n=1")
    assert paged.json()["tags"] == ["latest"] and 'rel="next"' in paged.headers["link"]
    gate.mode = "500"
    assert get(mirror, "/v2/up/library/app/tags/list").json()["tags"] == ["v1"]
    unknown = get(mirror, "/v2/up/library/nothing/tags/list")
    assert unknown.status_code == 503 and "answered 500" in unknown.text


def test_basic_auth_upstreams_and_tokens_asked_once_per_repository(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    # Token upstream: one challenge and one token per repository, then the cached token.
    mirror = start_registry(*mirror_args(gate, ttl="0s"))
    for _ in range(3):
        assert get(mirror, "/v2/up/library/app/manifests/v1").status_code == 200
    assert_pulls(tmp_path / "home", f"{mirror.host}/up/library/app:v1", image)
    challenged = [path for method, path, status in gate.requests if status == 401]
    assert len(challenged) == 1, challenged
    # Basic upstream: pier with htpasswd only, the login in the URL (a config-file form).
    basic_root = tmp_path / "basic"
    basic_root.mkdir()
    htpasswd = write_htpasswd(basic_root / "htpasswd", dict([ALICE]))
    basic = PierServer(basic_root / "data", "--htpasswd", str(htpasswd)).start()
    try:
        for blob in image.blobs:
            push_blob(basic.url, "team/app", blob, {"Authorization": "Basic " + _b64(ALICE)})
        push_manifest(basic.url, "team/app", "v1", image.manifest, {"Authorization": "Basic " + _b64(ALICE)})
        anonymous = start_registry("--proxy", f"b={basic.url}")
        refused = get(anonymous, "/v2/b/team/app/manifests/v1")
        assert refused.status_code == 403 and "none is configured" in refused.text
        with_login = start_registry("--proxy", f"b=http://alice:wonderland@{basic.host}")
        assert_pulls(tmp_path / "home2", f"{with_login.host}/b/team/app:v1", image)
        assert "wonderland" not in with_login.log()
    finally:
        basic.stop()


def _b64(login: tuple[str, str]) -> str:
    return base64.b64encode(":".join(login).encode()).decode()


def test_an_upstream_blob_over_the_size_limit_is_refused_and_not_cached(
    start_registry, gate: Gate, image: Image
) -> None:
    mirror = start_registry(*mirror_args(gate, "--max-blob-size", "100KiB"))
    big = max(image.layers, key=lambda blob: blob.size)
    assert big.size > 100 * 1024
    refused = get(mirror, f"/v2/up/library/app/blobs/{big.digest}")
    assert refused.status_code == 503 and "over 102400" in refused.text
    assert not mirror.storage.exists(blob_data_path(big.digest))
    small = min(image.layers, key=lambda blob: blob.size)
    assert sha256(get(mirror, f"/v2/up/library/app/blobs/{small.digest}").content) == small.digest


def test_a_mirrored_name_reads_no_blob_the_upstream_does_not_have_there(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    mirror = start_registry(*mirror_args(gate))
    secret = write_blob(tmp_path / "secret", "application/octet-stream", os.urandom(4096))
    push_blob(mirror.url, "team/secret", secret)
    answer = get(mirror, f"/v2/up/library/app/blobs/{secret.digest}")
    assert answer.status_code == 404 and error_code(answer) == "BLOB_UNKNOWN"
    assert not mirror.storage.exists(f"repositories/up/library/app/_layers/sha256/{secret.digest[7:]}/link")
    # A blob the store has for a local image, which the upstream also has there, is served.
    shared = image.layers[0]
    push_blob(mirror.url, "team/local", shared)
    answer = get(mirror, f"/v2/up/library/app/blobs/{shared.digest}")
    assert answer.status_code == 200 and sha256(answer.content) == shared.digest
    assert gate.count("GET", f"/blobs/{shared.digest}") == 0  # checked with a HEAD, not fetched again


def test_a_large_manifest_arriving_in_many_reads_is_read_whole(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    document = json.loads(_manifest(image.config, image.layers[0]))
    document["annotations"] = {f"note.{i}": "x" * 1000 for i in range(1500)}  # 1.5 MB
    body = json.dumps(document).encode()
    headers = _alice_token(upstream, "library/big")
    for blob in (image.config, image.layers[0]):
        push_blob(upstream.server.url, "library/big", blob, headers)
    manifest = write_blob(tmp_path / "big", OCI_MANIFEST, body)
    push_manifest(upstream.server.url, "library/big", "v1", manifest, headers)
    mirror = start_registry(*mirror_args(gate))
    answer = get(mirror, "/v2/up/library/big/manifests/v1")
    assert answer.status_code == 200, answer.text
    assert answer.content == body


def test_credentials_never_follow_a_redirect_to_another_host(
    start_registry, upstream: Upstream, gate: Gate, image: Image, tmp_path: Path
) -> None:
    cdn = PierServer(tmp_path / "cdn")  # holds the same blobs, open, as a CDN would
    cdn.start()
    try:
        for blob in image.blobs:
            push_blob(cdn.url, "library/app", blob)
        with Gate(cdn.url) as cdn_gate:
            gate.blob_redirect = cdn_gate.url
            mirror = start_registry(*mirror_args(gate))
            assert_pulls(tmp_path / "home", f"{mirror.host}/up/library/app:v1", image)
            assert cdn_gate.count("GET", "/blobs/") == len(image.blobs)
            assert set(cdn_gate.authorizations) == {None}
            assert any(a and a.startswith("Bearer ") for a in gate.authorizations)
    finally:
        cdn.stop()


@pytest.mark.parametrize(
    "garbage",
    [b'{"tags": 5}', b'["v1"]', b"[" * 100000 + b"]" * 100000, b"not json"],
    ids=["tags-not-a-list", "not-an-object", "deeply-nested", "not-json"],
)
def test_a_garbage_tag_list_upstream_is_covered_by_the_cache_or_named(start_registry, garbage: bytes) -> None:
    config = descriptor("application/vnd.oci.image.config.v1+json", b"{}")
    layer = descriptor("application/vnd.oci.image.layer.v1.tar", b"layer")
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    ).encode()

    def script(request: Request) -> Answer:
        if "/manifests/" in request.path:
            headers = [("Content-Type", OCI_MANIFEST), ("Docker-Content-Digest", sha256(manifest))]
            return Answer(200, headers, manifest)
        if request.path.startswith("/v2/library/") and "/tags/list" in request.path:
            return Answer(200, [("Content-Type", "application/json")], garbage)
        return Answer(200, [("Content-Type", "application/json")], b"{}")

    with ScriptedServer(script) as liar:
        mirror = start_registry("--proxy", f"up={liar.url}", "--proxy-timeout", "5s")
        assert get(mirror, "/v2/up/library/app/manifests/v1").status_code == 200
        cached = get(mirror, "/v2/up/library/app/tags/list")
        assert cached.status_code == 200, cached.text
        assert cached.json()["tags"] == ["v1"]
        unknown = get(mirror, "/v2/up/library/nothing/tags/list")
        assert unknown.status_code == 503, unknown.text
        assert error_code(unknown) == "UNAVAILABLE"
        assert liar.url in unknown.text and "bad tag list" in unknown.text
