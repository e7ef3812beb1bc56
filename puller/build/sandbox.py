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

Every sandbox lives in ``<home>/layers/.building-<id>/`` (the layer store's filesystem,
so adopting the upper directory is a rename) with a lock held while it is in use: the
next build removes what a killed one left, mount and runtime container included.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import TracebackType

from ..run.overlay import OverlayUnavailable, mount_overlay, unmount
from ..unpack.layer_store import force_rmtree
from ..unpack.snapshot import materialize
from .layer_writer import diff_trees

PREFIX = ".building-"
FORCE_COPY = "PIER_BUILD_ROOTFS"  # "copy": never mount overlayfs (a filesystem where it misbehaves)
WHOLE_FILES = {"redirect_dir": "off", "metacopy": "off"}  # an upper directory that is a layer's own


class Sandbox:
    """One step's writable root filesystem on ``layers`` (bottom first)."""

    def __init__(
        self,
        layer_root: Path,
        layers: list[Path],
        files: list[str] = (),  # type: ignore[assignment]
        directories: list[str] = (),  # type: ignore[assignment]
        *,
        writable: bool = True,
    ) -> None:
        self.layers = layers
        self.files = list(files)
        self.directories = list(directories)
        self.writable = writable
        layer_root.mkdir(parents=True, exist_ok=True)
        self.base = layer_root / f"{PREFIX}{uuid.uuid4().hex}"
        self.rootfs = self.base / "rootfs"
        self.upper = self.base / "upper"
        self.mode = "overlay"
        self.copy_reason = ""
        self._lock_fd = -1

    def __enter__(self) -> Sandbox:
        self.base.mkdir()
        self._lock_fd = os.open(self.base / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    def _mountpoints(self) -> Path:
        """A lower directory holding nothing but empty mount points: the bottom of the stack."""
        points = self.base / "mountpoints"
        points.mkdir()
        for directory in ["proc", "sys", "dev", *self.directories]:
            (points / directory.strip("/")).mkdir(parents=True, exist_ok=True)
        for file in self.files:
            target = points / file.strip("/")
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
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def clean_dead_sandboxes(layer_root: Path) -> None:
    """Sandboxes whose build was killed: their lock is free. Runtime container, mount, files: gone."""
    if not layer_root.is_dir():
        return
    for base in layer_root.glob(f"{PREFIX}*"):
        try:
            fd = os.open(base / "lock", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a build is using it
            with contextlib.suppress(OSError, ValueError):
                runtime, container_id = (base / "container").read_text().split()
                subprocess.run([runtime, "delete", "--force", container_id], capture_output=True, check=False)
            for mounted in ("rootfs", "bind"):
                unmount(base / mounted)
            force_rmtree(base)
        finally:
            if fd >= 0:
                os.close(fd)


def copy_tree(source: Path, target: Path) -> None:
    """A plain copy of a tree (bind sources made from the context): metadata and symlinks kept."""
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
