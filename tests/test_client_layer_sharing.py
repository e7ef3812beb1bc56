"""Layers shared by images, counted by prune, safe under concurrent pulls, kills and faults.

Every step is the ``pier`` CLI in its own process against a real registry on 127.0.0.1
(pier's own, or a scripted one where a test needs a slow or lying server), and containers
run under runc on overlayfs, or on a copy where the store sits on a filesystem overlayfs
refuses as an upper directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import REPO_ROOT, push_blob, push_manifest, run_pier, wait_until
from .images import Image, build_image, random_files
from .scripted import Answer, Request, ScriptedServer

pytestmark = pytest.mark.slow  # the pier CLI as a process per step, runc


def layer_dirs(home: Path) -> list[str]:
    root = home / "layers"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def leftovers(home: Path) -> list[str]:
    return [p.name for p in (home / "layers").iterdir() if p.name.startswith((".unpacking", ".removing"))]


def push(registry, repository: str, image: Image) -> str:
    for blob in image.blobs:
        push_blob(registry.url, repository, blob)
    push_manifest(registry.url, repository, image.tag or "v1", image.manifest)
    return f"{registry.host}/{repository}:{image.tag}"


@pytest.fixture
def family(registry, tmp_path) -> tuple[Image, Image, str, str]:
    """Two images on the same busybox base, each with layers of its own."""
    first = build_image(tmp_path / "layout", "first", layers=[random_files([300_000], prefix="a/f")])
    second = build_image(tmp_path / "layout", "second", layers=[random_files([200_000], prefix="b/f")])
    assert first.layers[0] == second.layers[0]  # the shared base
    return first, second, push(registry, "share/first", first), push(registry, "share/second", second)


def test_a_shared_base_is_fetched_unpacked_and_stored_once(family, tmp_path) -> None:
    first, second, first_ref, second_ref = family
    home = tmp_path / "home"
    assert run_pier(home, "pull", first_ref).returncode == 0
    base = home / "layers" / first.diff_ids[0].replace(":", "-")
    base_inode = base.stat().st_ino
    pulled = run_pier(home, "pull", second_ref)
    assert pulled.returncode == 0, pulled.stderr
    base_line = next(
        line for line in pulled.stdout.splitlines() if line.startswith(first.layers[0].digest[7:19])
    )
    assert "exists" in base_line  # neither fetched nor unpacked again
    assert base.stat().st_ino == base_inode
    assert layer_dirs(home) == sorted({d.replace(":", "-") for d in (*first.diff_ids, *second.diff_ids)})

    assert run_pier(home, "rmi", first_ref).returncode == 0  # first's own layer goes, the base stays
    assert layer_dirs(home) == sorted(d.replace(":", "-") for d in second.diff_ids)
    ran = run_pier(home, "run", "--rm", second_ref, "ls", "/b")
    assert ran.returncode == 0 and ran.stdout.split() == ["f0.bin"], ran.stderr


def test_two_pulls_at_once_share_their_base_safely(family, tmp_path) -> None:
    first, second, first_ref, second_ref = family
    home = tmp_path / "home"
    env = {**os.environ, "PIER_HOME": str(home)}
    pulls = [
        subprocess.Popen(
            [sys.executable, "-m", "puller", "pull", ref, "-q"],
            env=env,
            cwd=REPO_ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for ref in (first_ref, second_ref)
    ]
    results = [pull.communicate(timeout=120) for pull in pulls]
    assert [pull.returncode for pull in pulls] == [0, 0], results
    assert layer_dirs(home) == sorted({d.replace(":", "-") for d in (*first.diff_ids, *second.diff_ids)})
    assert leftovers(home) == []
    for ref, path in ((first_ref, "/a"), (second_ref, "/b")):
        ran = run_pier(home, "run", "--rm", ref, "ls", path)
        assert ran.returncode == 0 and ran.stdout.strip() == "f0.bin", ran.stderr


def test_prune_waits_for_a_pull_in_progress(family, tmp_path) -> None:
    _, _, first_ref, _ = family
    home = tmp_path / "home"
    assert run_pier(home, "pull", first_ref).returncode == 0
    assert run_pier(home, "rmi", first_ref).returncode == 0
    assert run_pier(home, "pull", "--no-unpack", first_ref).returncode == 0
    # Stand in for a pull that has unpacked its layers and not yet written its tag.
    lock = os.open(home / "lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_SH)
    (home / "refs").rename(home / "refs-hidden")
    prune = subprocess.Popen(
        [sys.executable, "-m", "puller", "prune"],
        env={**os.environ, "PIER_HOME": str(home)},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # sleep-ok: the prune must still be waiting for the lock after a while
        assert prune.poll() is None
        (home / "refs-hidden").rename(home / "refs")  # the pull writes its tag, then lets go
    finally:
        os.close(lock)
    out, _ = prune.communicate(timeout=60)
    assert prune.returncode == 0
    assert out.startswith("Deleted 0 blobs") and ", 0 unpacked layers" in out
    ran = run_pier(home, "run", "--rm", first_ref, "ls", "/a")
    assert ran.returncode == 0, ran.stderr


def test_a_kept_container_keeps_its_layers_through_rmi_and_prune(family, tmp_path) -> None:
    first, _, first_ref, _ = family
    home = tmp_path / "home"
    assert run_pier(home, "run", "--name", "keeper", first_ref, "true").returncode == 0
    assert run_pier(home, "rmi", "-f", first_ref).returncode == 0
    assert run_pier(home, "prune").returncode == 0
    assert layer_dirs(home) == sorted(d.replace(":", "-") for d in first.diff_ids)
    state = json.loads((home / "containers" / "keeper" / "state.json").read_text())
    assert state["layers"] == list(first.diff_ids) and state["rootfs_mode"] == "overlay"
    info = run_pier(home, "info")
    assert info.returncode == 0 and re.search(r"Rootfs:\s+overlay", info.stdout), info.stdout
    assert re.search(r"Layers:\s+2 unpacked", info.stdout) and re.search(r"Layer blobs:\s+kept", info.stdout)
    assert run_pier(home, "rm", "keeper").returncode == 0
    pruned = run_pier(home, "prune")
    assert re.search(r", 2 unpacked layers \(", pruned.stdout), pruned.stdout
    assert layer_dirs(home) == []


def test_read_only_rootfs_refuses_writes(family, tmp_path) -> None:
    _, _, first_ref, _ = family
    home = tmp_path / "home"
    ran = run_pier(home, "run", "--rm", "--read-only", first_ref, "sh", "-c", "echo x > /a/new")
    assert ran.returncode != 0 and "Read-only file system" in ran.stderr
    ran = run_pier(home, "run", "--rm", first_ref, "sh", "-c", "echo x > /a/new && cat /a/new")
    assert ran.returncode == 0 and ran.stdout == "x\n", ran.stderr


@pytest.fixture
def overlay_home(tmp_path):
    """A PIER_HOME on an overlayfs mount: overlayfs refuses it as an upper directory."""
    base = tmp_path / "ovl"
    for name in ("lower", "upper", "work", "merged"):
        (base / name).mkdir(parents=True)
    options = f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(base / "merged")], check=True)
    yield base / "merged" / "home"
    for mounted in reversed(Path("/proc/self/mounts").read_text().splitlines()):
        point = mounted.split()[1]
        if point.startswith(str(base)):
            subprocess.run(["umount", "-l", point], check=False)


def test_where_overlayfs_cannot_mount_containers_get_a_copy_and_pier_says_so_once(
    family, overlay_home
) -> None:
    _, _, first_ref, _ = family
    home = overlay_home
    info = run_pier(home, "info")
    assert info.returncode == 0 and re.search(
        r"Rootfs:\s+copy \(overlay mount refused: .*upperdir", info.stdout
    )
    ran = run_pier(home, "run", "--rm", first_ref, "sh", "-c", "ls /a; echo changed > /etc/motd")
    assert ran.returncode == 0 and ran.stdout == "f0.bin\n", ran.stderr
    assert ran.stderr.count("copy of their image's layers") == 1
    again = run_pier(home, "run", "--name", "copied", first_ref, "sh", "-c", "wc -c < /a/f0.bin; ls /etc")
    assert again.returncode == 0 and again.stdout.split()[0] == "300000", again.stderr
    assert "motd" not in again.stdout.split()  # a fresh copy: the first container's write is gone
    assert "copy of their image's layers" not in again.stderr  # said once
    state = json.loads((home / "containers" / "copied" / "state.json").read_text())
    assert state["rootfs_mode"] == "copy" and "upperdir" in state["copy_reason"]
    assert not list((home / "layers").glob("*/diff/etc/motd"))  # no copy ever wrote into a layer


def _registry_script(image: Image, slow: str | None, served: list[tuple[str, str]]):
    """A registry serving ``image``; the blob ``slow`` trickles out (and honours Range)."""
    blobs = {blob.digest: blob.read() for blob in image.blobs}
    manifest = image.manifest.read()

    def answer(request: Request) -> Answer:
        if request.path.endswith(f"/manifests/{image.tag}"):
            return Answer(200, [("Content-Type", image.manifest.media_type)], manifest)
        digest = request.path.rsplit("/", 1)[-1]
        if digest not in blobs:
            return Answer(
                404, [("Content-Type", "application/json")], b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'
            )
        data = blobs[digest]
        asked = request.headers.get("range", "")
        served.append((digest, asked))
        first, _, last = asked.removeprefix("bytes=").partition("-")
        start, end = int(first or 0), int(last) + 1 if last else len(data)
        status = 206 if asked else 200
        headers = [("Content-Length", str(end - start))]
        if asked:
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(data)}"))
        if digest != slow:
            return Answer(status, headers, data[start:end])

        def trickle():
            for offset in range(start, end, 16_384):
                yield data[offset : min(offset + 16_384, end)]
                time.sleep(0.05)  # sleep-ok: a slow link, so the test can kill the pull mid-blob

        return Answer(status, headers, trickle())

    return answer


def test_a_pull_killed_midway_resumes_without_refetching_complete_layers(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[{"small": b"s"}, random_files([1_500_000])])
    big = image.layers[-1]
    served: list[tuple[str, str]] = []
    home = tmp_path / "home"
    with ScriptedServer(_registry_script(image, big.digest, served)) as server:
        ref = f"{server.host}/kill/me:v1"
        env = {**os.environ, "PIER_HOME": str(home)}
        pull = subprocess.Popen(
            [sys.executable, "-m", "puller", "pull", ref, "-q"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            partial = home / "partial" / big.digest.replace(":", "-")
            wait_until(
                lambda: len(layer_dirs(home)) == 2 and partial.exists() and partial.stat().st_size > 200_000,
                timeout=60,
                what="two layers unpacked and the third under way",
            )
            os.kill(pull.pid, signal.SIGKILL)
        finally:
            pull.wait()
    assert len(layer_dirs(home)) == 2  # the base and the small layer; the big one never half-appears
    assert not (home / "layers" / image.diff_ids[-1].replace(":", "-")).exists()
    resumed: list[tuple[str, str]] = []
    with ScriptedServer(_registry_script(image, None, resumed)) as server:
        pulled = run_pier(home, "pull", f"{server.host}/kill/me:v1")
    assert pulled.returncode == 0, pulled.stderr
    assert [digest for digest, _ in resumed] == [big.digest]  # the config and complete layers: not again
    assert resumed[0][1].startswith("bytes=") and int(resumed[0][1][6:].rstrip("-")) > 200_000  # resumed
    assert len(layer_dirs(home)) == 3 and leftovers(home) == []


def test_a_corrupt_layer_is_never_unpacked(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[random_files([100_000])])
    blob = image.layers[-1]
    rotten = bytearray(blob.read())
    rotten[len(rotten) // 2] ^= 0xFF  # inside the deflate stream: gzip may not notice by itself
    served: list[tuple[str, str]] = []
    script = _registry_script(image, None, served)

    def lying(request: Request) -> Answer:
        if request.path.endswith(blob.digest):
            return Answer(200, [], bytes(rotten))
        return script(request)

    home = tmp_path / "home"
    with ScriptedServer(lying) as server:
        pulled = run_pier(home, "pull", f"{server.host}/rot/ten:v1")
    assert pulled.returncode == 1
    assert pulled.stderr.count("\n") == 1 and "Traceback" not in pulled.stderr
    assert blob.digest in pulled.stderr and (
        "digest mismatch" in pulled.stderr or "cannot unpack" in pulled.stderr
    )
    assert image.diff_ids[-1].replace(":", "-") not in layer_dirs(home)
    assert not (home / "blobs" / "sha256" / blob.digest[7:]).exists()
    assert leftovers(home) == []


def test_keeping_only_unpacked_layers(family, tmp_path) -> None:
    first, _, first_ref, _ = family
    home = tmp_path / "home"
    env = {"PIER_KEEP_LAYER_BLOBS": "0"}
    assert run_pier(home, "pull", first_ref, env=env).returncode == 0
    kept = {p.name for p in (home / "blobs" / "sha256").iterdir()}
    assert kept == {first.manifest.digest[7:], first.config.digest[7:]}  # no layer blob
    assert len(layer_dirs(home)) == len(first.diff_ids)
    ran = run_pier(home, "run", "--rm", first_ref, "ls", "/a", env=env)
    assert ran.returncode == 0 and ran.stdout == "f0.bin\n", ran.stderr
    info = run_pier(home, "info", env=env)
    assert "dropped once unpacked" in info.stdout
    unpacked = run_pier(home, "unpack", first_ref, str(tmp_path / "tree"), env=env)  # from the layers
    assert unpacked.returncode == 0 and (tmp_path / "tree" / "a" / "f0.bin").stat().st_size == 300_000
    saved = run_pier(home, "save", first_ref, "-o", str(tmp_path / "out.tar"), env=env)
    assert saved.returncode == 1 and saved.stderr.count("\n") == 1
    assert "not in the local store" in saved.stderr and "pull" in saved.stderr


RANGED = {"PIER_PULL_RANGE_MIN": "100000"}  # the default is 64 MiB: a test layer of 1.5 MB comes in ranges


def test_a_big_layer_comes_in_parallel_ranges_and_a_dropped_range_resumes(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[random_files([1_500_000])])
    big = image.layers[-1]
    served: list[tuple[str, str]] = []
    script = _registry_script(image, None, served)
    dropped: list[str] = []

    def dropping(request: Request) -> Answer:
        answer = script(request)
        asked = request.headers.get("range", "")
        if request.path.endswith(big.digest) and asked and not asked.startswith("bytes=0-") and not dropped:
            dropped.append(asked)  # the second range: half of it, then the connection closes
            body = answer.body
            assert isinstance(body, bytes)
            return Answer(206, answer.headers, [body[: len(body) // 2]])
        return answer

    home = tmp_path / "home"
    with ScriptedServer(dropping) as server:
        pulled = run_pier(home, "pull", f"{server.host}/ranged/big:v1", env=RANGED)
    assert pulled.returncode == 0, pulled.stderr
    asked = sorted(r for d, r in served if d == big.digest)
    assert all(asked)  # ranges only, whether the layer streamed into an unpacker or waited for one
    starts = sorted(int(r[6:].split("-")[0]) for r in asked)
    assert len(asked) == 5 and starts[0] == 0  # four ranges, and one of them asked again
    begin, end = dropped[0][6:].split("-")
    again = [r for r in asked if r.endswith(f"-{end}") and r != dropped[0]]
    assert again and int(again[0][6:].split("-")[0]) > int(begin)  # resumed where it stopped, not restarted
    assert (home / "blobs" / "sha256" / big.digest[7:]).read_bytes() == big.read()
    assert len(layer_dirs(home)) == 2 and not list((home / "partial").iterdir())
    ran = run_pier(home, "run", "--rm", f"{server.host}/ranged/big:v1", "wc", "-c", "/data/file0.bin")
    assert ran.returncode == 0 and ran.stdout.split()[0] == "1500000", ran.stderr


def test_a_registry_that_ignores_range_is_read_as_one_stream(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[random_files([1_500_000])])
    served: list[tuple[str, str]] = []
    script = _registry_script(image, None, served)

    def no_ranges(request: Request) -> Answer:
        return script(Request(request.method, request.path, {}, request.body))  # as if Range were not sent

    home = tmp_path / "home"
    with ScriptedServer(no_ranges) as server:
        pulled = run_pier(home, "pull", f"{server.host}/ranged/whole:v1", env=RANGED)
    assert pulled.returncode == 0, pulled.stderr
    assert [d for d, _ in served].count(image.layers[-1].digest) == 1
    assert len(layer_dirs(home)) == 2


def test_a_corrupt_ranged_layer_keeps_nothing(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[random_files([1_500_000])])
    big = image.layers[-1]
    served: list[tuple[str, str]] = []
    script = _registry_script(image, None, served)

    def flipping(request: Request) -> Answer:
        answer = script(request)
        if request.path.endswith(big.digest) and isinstance(answer.body, bytes) and len(answer.body) > 1000:
            body = bytearray(answer.body)
            body[len(body) // 3] ^= 0xFF
            return Answer(answer.status, answer.headers, bytes(body))
        return answer

    home = tmp_path / "home"
    with ScriptedServer(flipping) as server:
        pulled = run_pier(home, "pull", f"{server.host}/ranged/rotten:v1", env=RANGED)
    assert pulled.returncode == 1 and pulled.stderr.count("\n") == 1, pulled.stderr
    assert big.digest in pulled.stderr
    assert not (home / "blobs" / "sha256" / big.digest[7:]).exists()
    assert image.diff_ids[-1].replace(":", "-") not in layer_dirs(home)
    assert not [p for p in (home / "partial").iterdir() if p.stat().st_size]  # no ranges file, no bytes kept


def test_a_full_disk_stops_the_pull_in_one_line_and_the_next_pull_finishes_the_work(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[random_files([600_000])])
    served: list[tuple[str, str]] = []
    home = tmp_path / "home"
    with ScriptedServer(_registry_script(image, None, served)) as server:
        ref = f"{server.host}/disk/full:v1"
        full = run_pier(
            home, "pull", ref, env={"PIER_UNPACK_MIN_FREE": "1000000TB"}
        )  # as if the disk were full
        assert full.returncode == 1 and full.stderr.count("\n") == 1 and "Traceback" not in full.stderr
        assert "PIER_UNPACK_MIN_FREE" in full.stderr
        assert layer_dirs(home) == [] and leftovers(home) == []
        first = len(served)
        pulled = run_pier(home, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    again = [digest for digest, asked in served[first:] if not asked]  # fetched from their first byte
    complete = {blob.digest for blob in image.blobs if (home / "blobs" / "sha256" / blob.digest[7:]).exists()}
    assert len(layer_dirs(home)) == len(image.layers)
    assert image.config.digest not in again  # what the failed pull completed is not fetched again
    assert complete == {blob.digest for blob in image.blobs}
