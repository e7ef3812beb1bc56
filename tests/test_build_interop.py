"""`pier build` beside tools no one here wrote: buildah builds the same Dockerfile to the same
files; skopeo and umoci read what pier pushed; a cache exported to a registry serves another home.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .build_fixtures import BASE, Home, digest_of, make_home
from .layers import umoci_rootfs

pytestmark = pytest.mark.slow  # runc, buildah, a registry

# buildah leaves the files it bind-mounts during RUN in its images (test-servers.md)
BUILDAH_MOUNT_POINTS = {"etc/hosts", "etc/hostname", "etc/resolv.conf", "run/secrets", "run"}

DOCKERFILE = """FROM {base} AS build
WORKDIR /src
COPY src/ ./
RUN mkdir -p /out && for f in *.txt; do tr a-z A-Z < "$f" > "/out/$f"; done
FROM {base}
ARG FLAVOR=plain
ENV APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY requirements.txt .
RUN rm /etc/group && mkdir -p data/cache && echo "$FLAVOR" > data/flavor && ln -s data/flavor current
RUN chmod 0700 data/cache && touch data/cache/.keep && rm -rf /tmp && mkdir -m 1777 /tmp
COPY --from=build /out/ ./upper/
COPY --chown=1000:1000 --chmod=0640 src/a.txt ./owned.txt
CMD ["cat", "data/flavor"]
"""


def files_of(root: Path) -> dict[str, tuple]:
    """Type, mode, owner and content or target of every entry: what a container sees, no times."""
    found: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[name] = ("symlink", os.readlink(path), info.st_uid, info.st_gid)
        elif stat.S_ISDIR(info.st_mode):
            found[name] = ("dir", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        else:
            found[name] = ("file", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, path.read_bytes())
    return found


def context(tmp_path: Path, base: str) -> Path:
    directory = tmp_path / "context"
    (directory / "src").mkdir(parents=True)
    (directory / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    (directory / "requirements.txt").write_text("numpy==2.1\n")
    for name in ("a", "b", "c"):
        (directory / "src" / f"{name}.txt").write_text(f"source {name}\n")
    return directory


@contextlib.contextmanager
def buildah(tmp_path: Path) -> Iterator[list[str]]:
    executable = shutil.which("buildah") or pytest.fail(
        "buildah is not installed (Debian: apt-get install buildah)"
    )
    root, runroot = tmp_path / "buildah-root", tmp_path / "buildah-runroot"
    command = [executable, "--root", str(root), "--runroot", str(runroot)]
    try:
        yield command
    finally:
        subprocess.run([*command, "rm", "--all"], capture_output=True, check=False)
        subprocess.run([*command, "rmi", "--all", "--force"], capture_output=True, check=False)
        for mounted in Path("/proc/self/mounts").read_text().splitlines():
            point = mounted.split()[1]
            if point.startswith(str(root)):
                subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def test_pier_and_buildah_build_the_same_files(registry, tmp_path: Path) -> None:
    home = make_home(tmp_path)
    base = f"{registry.host}/build/base:1"
    pushed = home.pier("tag", BASE, base)
    assert pushed.returncode == 0, pushed.stderr
    assert home.pier("push", "-q", base).returncode == 0
    directory = context(tmp_path, base)
    digest_of(home.build(directory, "-t", "local/same:1", "--build-arg", "FLAVOR=spicy"))
    ours = tmp_path / "pier-rootfs"
    unpacked = home.pier("unpack", "local/same:1", str(ours))
    assert unpacked.returncode == 0, unpacked.stderr
    with buildah(tmp_path) as command:
        built = subprocess.run(
            [
                *command,
                *("bud", "--isolation", "chroot", "--layers", "--tls-verify=false"),
                *("--build-arg", "FLAVOR=spicy", "-t", "same", str(directory)),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert built.returncode == 0, built.stderr
        layout = tmp_path / "buildah-layout"
        subprocess.run([*command, "push", "same", f"oci:{layout}:t"], check=True, capture_output=True)
    theirs = umoci_rootfs(layout, "t", tmp_path / "buildah-bundle")
    mine, reference = files_of(ours), files_of(theirs)
    for name in BUILDAH_MOUNT_POINTS:
        if name not in mine:
            reference.pop(name, None)
    differing = sorted(name for name in set(mine) | set(reference) if mine.get(name) != reference.get(name))
    assert differing == [], [(name, mine.get(name), reference.get(name)) for name in differing[:10]]
    assert mine["srv/app/upper/a.txt"][4] == b"SOURCE A\n"


def test_pushed_build_reads_with_skopeo_and_umoci(registry, skopeo, tmp_path: Path) -> None:
    home = make_home(tmp_path)
    directory = context(tmp_path, BASE)
    reference = f"{registry.host}/build/pushed:1"
    digest = digest_of(home.build(directory, "-t", reference, "--push", "--format", "docker"))
    layout = tmp_path / "copied"
    skopeo.run("copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:t")
    rootfs = umoci_rootfs(layout, "t", tmp_path / "bundle")
    assert (rootfs / "srv/app/data/flavor").read_text() == "plain\n"
    assert not (rootfs / "etc/group").exists()
    inspected = skopeo.run("inspect", "--raw", "--tls-verify=false", f"docker://{reference}")
    assert b"application/vnd.docker.distribution.manifest.v2+json" in inspected.stdout
    assert (
        digest.split(":")[1]
        in subprocess.run(
            ["sha256sum"], input=inspected.stdout, capture_output=True, check=True
        ).stdout.decode()
    )
    podman = shutil.which("podman") or pytest.fail("podman is not installed (Debian: apt-get install podman)")
    podman_root = Path(tempfile.mkdtemp(prefix="pier-podman-"))  # podman: a runroot of <= 50 characters
    try:
        pulled = subprocess.run(
            [
                *(podman, "--root", str(podman_root / "root"), "--runroot", str(podman_root / "run")),
                *("pull", "--tls-verify=false", reference),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pulled.returncode == 0, pulled.stderr
    finally:
        for mounted in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            if mounted.split()[1].startswith(str(podman_root)):
                subprocess.run(["umount", "-l", mounted.split()[1]], check=False)
        shutil.rmtree(podman_root, ignore_errors=True)


def test_cache_exported_to_a_registry_serves_another_home(registry, tmp_path: Path) -> None:
    first = make_home(tmp_path / "ci")
    directory = context(tmp_path, BASE)
    cache = f"{registry.host}/build/cache:main"
    built = first.build(directory, "-t", "local/cached:1", "--cache-to", cache)
    digest = digest_of(built)
    colleague: Home = make_home(tmp_path / "laptop")
    again = colleague.build(directory, "-t", "local/cached:1", "--cache-from", cache)
    assert digest_of(again) == digest
    assert "  | " not in again.stderr  # no RUN ran: every layer came from the registry
    run = colleague.pier("run", "--rm", "local/cached:1")
    assert run.stdout == "plain\n", run.stderr
    changed = colleague.build(directory, "--cache-from", cache, "--build-arg", "FLAVOR=other")
    assert changed.returncode == 0 and "  | " not in changed.stderr.split("ARG FLAVOR")[0]
