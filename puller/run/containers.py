"""Containers pier started: one bundle directory each, with its state and writable rootfs.

    <home>/containers/<id>/state.json   what ``pier ps`` shows (image, command, status, exit code)
    <home>/containers/<id>/config.json  the OCI runtime bundle's config
    <home>/containers/<id>/rootfs       an overlay mount: the image's layer directories below, ``upper`` above

The layer directories are never written: each container's changes land in its own
``upper`` directory, kept until ``pier rm`` (at once with ``--rm``). Where overlayfs
cannot be mounted (no privilege, or the store sits on a filesystem overlayfs refuses as
upper), the layers are copied instead (``unpack.snapshot``: reflinks where the filesystem
has them) and the state says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import PierError
from ..unpack.snapshot import materialize
from .overlay import OverlayUnavailable, mount_overlay, unmount

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ContainerError(PierError):
    pass


@dataclass
class ContainerState:
    id: str
    image: str
    digest: str
    chain_id: str
    command: list[str]
    runtime: str
    created: float = field(default_factory=time.time)
    status: str = "created"  # created, running, exited
    exit_code: int | None = None
    rootfs_mode: str = "overlay"  # or "copy"
    layers: list[str] = field(default_factory=list)  # diff IDs, bottom first: kept while the container is
    copy_reason: str = ""  # why overlayfs was not used
    mounted_layers: list[str] = field(
        default_factory=list
    )  # of artifacts mounted read-only (--mount type=image)


class Container:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.rootfs = directory / "rootfs"

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    def read_state(self) -> ContainerState:
        return ContainerState(**json.loads(self.state_path.read_text()))

    def write_state(self, state: ContainerState) -> None:
        temporary = self.directory / ".state.json.tmp"
        temporary.write_text(json.dumps(asdict(state), indent=2))
        os.replace(temporary, self.state_path)

    def mount(self, layers: list[Path], state: ContainerState) -> None:
        """Give the container a writable view of ``layers`` (bottom first): overlay, else a copy."""
        upper, work = self.directory / "upper", self.directory / "work"
        for directory in (upper, work, self.rootfs):
            directory.mkdir(exist_ok=True)
        if os.path.ismount(self.rootfs):
            return
        if state.rootfs_mode == "overlay":
            try:
                mount_overlay(list(reversed(layers)), upper, work, self.rootfs)
                return
            except OverlayUnavailable as exc:
                state.rootfs_mode, state.copy_reason = "copy", str(exc)
                self.write_state(state)
        try:
            materialize(layers, self.rootfs)
        except OSError as exc:
            raise ContainerError(f"could not copy the image's layers: {exc}") from None

    def mount_artifact(self, number: int, layers: list[Path]) -> Path:
        """A read-only view of an artifact's layer directories, for a bind mount into the container.

        Overlay without an upper directory is read-only by construction; an empty directory
        at the bottom gives it the two lower directories older kernels want. Where overlayfs
        is refused, a copy (reflinks where the filesystem has them).
        """
        view = self.directory / "artifacts" / str(number)
        empty = self.directory / "artifacts" / "empty"
        for directory in (view, empty):
            directory.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(view):
            return view
        try:
            mount_overlay([*layers, empty], None, None, view)
        except OverlayUnavailable:
            try:
                materialize(layers, view)
            except OSError as exc:
                raise ContainerError(f"could not copy the artifact's files: {exc}") from None
        return view

    def unmount(self) -> None:
        unmount(self.rootfs)
        artifacts = self.directory / "artifacts"
        if artifacts.is_dir():
            for view in artifacts.iterdir():
                unmount(view)


class Containers:
    def __init__(self, home: Path) -> None:
        self.root = home / "containers"

    def get(self, container_id: str) -> Container:
        if not NAME.fullmatch(container_id):
            raise ContainerError(
                f"invalid container name {container_id[:80]!r}: letters, digits, '_', '.', '-'"
            )
        return Container(self.root / container_id)

    def create(self, state: ContainerState) -> Container:
        self.root.mkdir(parents=True, exist_ok=True)
        container = self.get(state.id)
        try:
            container.directory.mkdir()
        except FileExistsError:
            raise ContainerError(f"a container named {state.id} already exists: pier rm {state.id}") from None
        container.write_state(state)
        return container

    def all(self) -> list[tuple[Container, ContainerState]]:
        found = []
        if self.root.is_dir():
            for directory in sorted(self.root.iterdir()):
                if directory.name.startswith("."):
                    continue
                container = Container(directory)
                try:
                    found.append((container, container.read_state()))
                except (FileNotFoundError, ValueError, TypeError):
                    continue  # being created or removed right now
        return found

    def layers_in_use(self) -> set[str]:
        """Diff IDs under the containers' mounts: a prune keeps them (copies do not need them)."""
        used = {layer for _, state in self.all() if state.rootfs_mode == "overlay" for layer in state.layers}
        return used | {layer for _, state in self.all() for layer in state.mounted_layers}

    def remove(self, container_id: str, force: bool = False) -> None:
        container = self.get(container_id)
        try:
            state = container.read_state()
        except FileNotFoundError:
            raise ContainerError(f"no such container: {container_id}") from None
        if is_running(state) and not force:
            raise ContainerError(f"container {container_id} is running: stop it first or use --force")
        if state.status != "exited":  # an exited one was deleted by the runtime's run already
            with contextlib.suppress(OSError):
                subprocess.run(
                    [state.runtime, "delete", "--force", state.id], capture_output=True, check=False
                )
        container.unmount()
        doomed = self.root / f".removing-{container_id}"
        os.rename(container.directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def is_running(state: ContainerState) -> bool:
    """Ask the runtime: pier may have been killed without updating the state file."""
    if state.status != "running":
        return False
    try:
        answer = subprocess.run(
            [state.runtime, "state", state.id], capture_output=True, text=True, check=False
        )
    except OSError:
        return False  # the runtime that started it is gone: so is the container
    if answer.returncode != 0:
        return False
    try:
        return json.loads(answer.stdout).get("status") in ("running", "created", "paused")
    except ValueError:
        return False
