"""Build deploy/Dockerfile with buildah, offline: a Debian base made here, wheels fetched beforehand.

The base image is Debian bookworm's own Python (``python3-venv`` and what it depends on,
as ``apt-cache depends`` resolves it) unpacked with ``dpkg-deb`` into a root filesystem,
with the host's busybox as the shell, committed by buildah as ``localhost/pier-base``.
That takes seconds where ``debootstrap`` takes over a minute (no maintainer scripts run:
the image gets no dpkg database and no CA bundle, which the build and the test do not need).
Downloading the .debs and the wheels is setup, done before the build; the build itself runs
with ``--network none`` and ``--pull=never``, so it cannot download anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .servers import REPO_ROOT

BASE_IMAGE = "localhost/pier-base"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Not in the base: the package manager and packages that only work once their maintainer
# scripts ran (ca-certificates builds its bundle in postinst), and what only they pull in.
NOT_IN_BASE = frozenset({"dpkg", "ca-certificates", "debconf", "perl-base"})
BUSYBOX = Path("/bin/busybox")


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian: apt-get install {package}; scripts/dev-setup does)")
    return path


def run(argv: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a setup command; on failure the test fails with its output."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {timeout}s: {' '.join(argv)}")
    if result.returncode != 0:
        pytest.fail(
            f"exit code {result.returncode}: {' '.join(argv)}\n--- stdout ---\n{result.stdout[-3000:]}"
            f"\n--- stderr ---\n{result.stderr[-3000:]}"
        )
    return result


class Timings:
    """How long each step took, printed at the end of the test (pytest -s shows it)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self._start = time.monotonic()

    def step(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self._start))
        self._start = now

    def report(self) -> str:
        return "\n".join(f"  {seconds:6.1f}s  {name}" for name, seconds in self.steps)


def remove_tree(path: Path) -> None:
    """Delete a test's large folder now rather than leave it to pytest's retention, unless
    something is still mounted below it (a failed ``pier run``): that is left for a person."""
    prefix = f"{path}/"
    with open("/proc/self/mounts") as mounts:
        if any(line.split()[1].startswith(prefix) for line in mounts):
            return
    shutil.rmtree(path, ignore_errors=True)


# -- the base image --------------------------------------------------------------------------
def python_packages(root: str = "python3-venv") -> list[str]:
    """Debian packages ``root`` needs at run time: Depends and Pre-Depends, first alternatives."""
    options = ["--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks"]
    options += ["--no-replaces", "--no-enhances"]
    output = run(["apt-cache", "depends", *options, root]).stdout
    graph: dict[str, list[tuple[bool, str, list[str]]]] = {}
    current = ""
    for line in output.splitlines():
        if not line.startswith(" "):
            current = line.strip()
            graph.setdefault(current, [])
        elif line.startswith("    "):  # a provider of the virtual package above
            graph[current][-1][2].append(line.strip())
        else:
            kind, _, name = line.strip().partition(": ")
            if kind.lstrip("|") in ("Depends", "PreDepends"):
                graph[current].append((kind.startswith("|"), name, []))
    needed: set[str] = set()
    todo = [root]
    while todo:
        package = todo.pop()
        if package in needed or package in NOT_IN_BASE:
            continue
        needed.add(package)
        deps = graph.get(package, [])
        index = 0
        while index < len(deps):  # "|Depends: a" + "Depends: b" is one group: a or b
            first = deps[index]
            while deps[index][0] and index + 1 < len(deps):
                index += 1
            index += 1
            _, name, providers = first
            if name.startswith("<"):
                name = providers[0] if providers else ""
            if name:
                todo.append(name)
    return sorted(needed)


def download_debs(packages: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *packages]
    result = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:  # stale package lists name versions the mirror no longer has
        run(["apt-get", "update", "-qq"])
        result = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        pytest.fail(f"apt-get download failed (needs deb.debian.org):\n{result.stderr[-3000:]}")
    debs = sorted(folder.glob("*.deb"))
    assert len(debs) == len(packages), (packages, debs)
    return debs


def make_rootfs(debs: list[Path], rootfs: Path) -> None:
    """Unpack the packages into a merged-/usr tree, as Debian bookworm lays it out, plus busybox."""
    for folder in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "root", "tmp", "var/tmp"):
        (rootfs / folder).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (rootfs / name).symlink_to(f"usr/{name}")
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "var/tmp").chmod(0o1777)
    for deb in debs:
        data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        untar = subprocess.run(
            ["tar", "-x", "--keep-directory-symlink", "-C", str(rootfs)],
            stdin=data.stdout,
            capture_output=True,
            check=False,
        )
        assert data.stdout is not None
        data.stdout.close()
        if data.wait() != 0 or untar.returncode != 0:
            pytest.fail(f"unpacking {deb.name} failed: {untar.stderr.decode(errors='replace')}")
    if not BUSYBOX.exists():
        pytest.fail("busybox is not installed (Debian: apt-get install busybox-static)")
    shutil.copy2(BUSYBOX, rootfs / "usr/bin/busybox")
    applets = run([str(BUSYBOX), "--list"]).stdout.split()
    for applet in applets:
        link = rootfs / "usr/bin" / applet
        if not os.path.lexists(link) and not os.path.lexists(rootfs / "usr/sbin" / applet):
            link.symlink_to("busybox")
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    if not (rootfs / "usr/bin/python3").exists():
        pytest.fail("the base has no /usr/bin/python3: python3-minimal was not unpacked")


class Buildah:
    """buildah with its own storage (vfs) in a test folder: nothing touches the machine's images."""

    def __init__(self, folder: Path) -> None:
        self.executable = need("buildah", "buildah")
        self.root = folder / "storage"
        self.runroot = folder / "run"
        self.home = folder / "home"
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def transport(self) -> str:
        """skopeo's name for this storage: containers-storage:[vfs@ROOT+RUNROOT]IMAGE."""
        return f"containers-storage:[vfs@{self.root}+{self.runroot}]"

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [self.executable, "--root", str(self.root), "--runroot", str(self.runroot)]
        argv += ["--storage-driver", "vfs", *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}
        return run(argv, timeout=timeout, env=env)

    def build_base(self, rootfs: Path, image: str = BASE_IMAGE) -> None:
        archive = rootfs.parent / "rootfs.tar"
        run(["tar", "-C", str(rootfs), "-cf", str(archive), "."])
        container = self("from", "scratch").stdout.strip()
        self("add", container, str(archive), "/")
        self("config", "--env", PATH_ENV, "--env", "LANG=C.UTF-8", "--cmd", "python3", container)
        self("commit", "--quiet", "--rm", container, image)
        archive.unlink()

    def remove_storage(self) -> None:
        remove_tree(self.root.parent)


# -- the wheels -------------------------------------------------------------------------------
def runtime_requirements() -> list[str]:
    """pier's dependencies from pyproject.toml and theirs, pinned to what this venv runs."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    todo = [Requirement(text) for text in project["dependencies"]]
    while todo:
        requirement = todo.pop()
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed in this venv: run scripts/dev-setup")
        name = dist.metadata["Name"].lower().replace("_", "-")
        extras = tuple(requirement.extras)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in pins:
            continue
        pins[key] = f"{name}=={dist.version}"
        for text in dist.requires or []:
            sub = Requirement(text)
            environments = [{"extra": extra} for extra in (*extras, "")]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                todo.append(sub)
    return sorted(set(pins.values()))


def start_wheel_download(folder: Path, log: Path) -> subprocess.Popen:
    """``pip download`` of every wheel the image needs (and setuptools to build pier), in the background."""
    build_requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    argv += ["--dest", str(folder), *runtime_requirements(), *build_requires]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
