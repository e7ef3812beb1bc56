"""Where a build step writes: the image's layers below, a fresh upper directory above.

A step (``RUN``, ``COPY``, ``ADD``, a ``WORKDIR`` that creates its directory) gets an
overlay mount of the layer store's directories with an empty upper directory; what the
step writes lands there, in overlayfs's own format (0/0 character devices for deletions,
an opaque xattr on replaced directories), which is the layer store's format too: the
upper directory is written as the step's layer and then becomes that layer's directory.

Where overlayfs cannot be mounted, the layers are copied (reflinks where the filesystem
has them) and the step's changes are found by comparing the tree before and after.

Mount points the runtime needs (``/etc/resolv.conf``, a secret's file, a cache mount's
directory) are provided by one more lower directory at the bottom of the stack, so the
runtime never creates them in the upper directory and they never enter a layer.

Every build has one ``Session``: ``<home>/layers/.building-<id>/`` (the layer store's
filesystem, so adopting an upper directory is a rename), locked for as long as the build
runs; its sandboxes, written blobs, bind sources and downloads live inside it. The next
build removes what a killed one left, mounts and runtime containers included; a running
build's session is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ..run.overlay import OverlayUnavailable, mount_overlay, unmount
from ..unpack.layer_store import force_rmtree
from ..unpack.snapshot import materialize
from .layer_writer import diff_trees

PREFIX = ".building-"
STAGING = ".building.staging-"  # a session before it is locked: not matched by PREFIX + "*"
STAGING_GRACE = 3600  # seconds: a staging older than this was left by a kill
FORCE_COPY = "PIER_BUILD_ROOTFS"  # "copy": never mount overlayfs (a filesystem where it misbehaves)
WHOLE_FILES = {"redirect_dir": "off", "metacopy": "off"}  # an upper directory that is a layer's own


class Session:
    """A build's scratch directory, locked while the build runs, removed when it ends."""

    def __init__(self, layer_root: Path) -> None:
        self.layer_root = layer_root
        self.base = layer_root / f"{PREFIX}{uuid.uuid4().hex}"
        self._lock_fd = -1

    def __enter__(self) -> Session:
        self.layer_root.mkdir(parents=True, exist_ok=True)
        clean_dead_sessions(self.layer_root)
        staging = self.layer_root / f"{STAGING}{uuid.uuid4().hex}"
        staging.mkdir()
        self._lock_fd = os.open(staging / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.rename(staging, self.base)  # only ever seen locked under its final name
        return self

    def scratch(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.base))

    def close(self) -> None:
        _remove_session(self.base)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class Sandbox:
    """One step's writable root filesystem on ``layers`` (bottom first), inside a session."""

    def __init__(
        self,
        session: Session,
        layers: list[Path],
        files: Sequence[str] = (),
        directories: Sequence[str] = (),
        *,
        writable: bool = True,
    ) -> None:
        self.layers = layers
        self.files = list(files)
        self.directories = list(directories)
        self.writable = writable
        self.base = session.base / f"step-{uuid.uuid4().hex}"
        self.rootfs = self.base / "rootfs"
        self.upper = self.base / "upper"
        self.mode = "overlay"
        self.copy_reason = ""

    def __enter__(self) -> Sandbox:
        self.base.mkdir()
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _inside(path: str) -> str:
        """A mount point's path below the mount-point directory: never ``..`` out of it."""
        return posixpath.normpath("/" + path).lstrip("/")

    def _mountpoints(self) -> Path:
        """A lower directory holding nothing but empty mount points: the bottom of the stack."""
        points = self.base / "mountpoints"
        points.mkdir()
        for directory in ["proc", "sys", "dev", *self.directories]:
            (points / self._inside(directory)).mkdir(parents=True, exist_ok=True)
        for file in self.files:
            target = points / self._inside(file)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        for path in points.rglob("*"):
            os.utime(path, (0, 0), follow_symlinks=False)
        return points

    def _mount(self, lowers: list[Path], upper: Path | None, work: Path | None) -> None:
        if os.environ.get(FORCE_COPY) == "copy":
            raise OverlayUnavailable(f"{FORCE_COPY}=copy")
        mount_overlay(list(reversed(lowers)), upper, work, self.rootfs, WHOLE_FILES if upper else None)

    def _prepare(self) -> None:
        lowers = [*self.layers]
        points = self._mountpoints()
        self.rootfs.mkdir()
        if not self.writable:
            try:
                self._mount([points, *lowers], None, None)
            except OverlayUnavailable as exc:
                self.mode, self.copy_reason = "copy", str(exc)
                materialize([points, *lowers], self.rootfs)
            return
        work = self.base / "work"
        self.upper.mkdir()
        work.mkdir()
        try:
            self._mount([points, *lowers], self.upper, work)
            return
        except OverlayUnavailable as exc:
            self.mode, self.copy_reason = "copy", str(exc)
        before = self.base / "before"
        before.mkdir()
        materialize([points, *lowers], before)
        materialize([before], self.rootfs)

    def record_container(self, container_id: str, runtime: str) -> None:
        """Name the runtime container in the sandbox: a later cleanup deletes it if we are killed."""
        (self.base / "container").write_text(f"{runtime}\n{container_id}\n")

    def changes(self) -> Path:
        """The step's writes in the layer store's format (call once, after the step)."""
        if self.mode == "overlay":
            unmount(self.rootfs)
            return self.upper
        diff_trees(self.base / "before", self.rootfs, self.upper)
        return self.upper

    def close(self) -> None:
        unmount(self.rootfs)
        force_rmtree(self.base)

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _remove_session(base: Path) -> None:
    """A session's runtime containers deleted, its mounts undone, its files gone."""
    for record in base.glob("step-*/container"):
        with contextlib.suppress(OSError, ValueError):
            runtime, container_id = record.read_text().split()
            subprocess.run([runtime, "delete", "--force", container_id], capture_output=True, check=False)
    prefix = str(base) + "/"
    with contextlib.suppress(OSError):
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                unmount(Path(point))
    force_rmtree(base)


def clean_dead_sessions(layer_root: Path) -> None:
    """Sessions whose build was killed (their lock is free), and stagings a kill interrupted."""
    for staging in layer_root.glob(f"{STAGING}*"):
        with contextlib.suppress(OSError):
            if time.time() - staging.stat().st_mtime > STAGING_GRACE:
                force_rmtree(staging)
    for base in layer_root.glob(f"{PREFIX}*"):
        try:
            fd = os.open(base / "lock", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            fd = -1  # no lock: not a session (a tree from an older pier)
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a build is using it
            _remove_session(base)
        finally:
            if fd >= 0:
                os.close(fd)
