"""Containers pier started: one bundle directory each, with its state and writable rootfs.

    <home>/containers/<id>/state.json   what ``pier ps`` shows (image, command, status, exit code)
    <home>/containers/<id>/config.json  the OCI runtime bundle's config
    <home>/containers/<id>/rootfs       an overlay mount: the cached image tree below, ``upper`` above

The cached image tree is never written: each container's changes land in its own
``upper`` directory. Where overlayfs cannot be mounted (not root, or the store already
sits on an overlay), the tree is copied instead (reflinks where the filesystem has them).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import PierError

MNT_DETACH = 2
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_libc = ctypes.CDLL(None, use_errno=True)  # the C library this process already has loaded


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


def _mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> bool:
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if any(ch in str(p) for p in (lower, upper, work) for ch in ",:"):
        return False  # overlayfs options cannot carry these characters
    result = _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode())
    return result == 0


def _unmount(target: Path) -> None:
    if os.path.ismount(target):
        _libc.umount2(os.fsencode(target), MNT_DETACH)


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

    def mount(self, lower: Path, state: ContainerState) -> None:
        """Give the container a writable view of ``lower``: overlay, or a copy where overlay is refused."""
        upper, work = self.directory / "upper", self.directory / "work"
        for directory in (upper, work, self.rootfs):
            directory.mkdir(exist_ok=True)
        if os.path.ismount(self.rootfs):
            return
        if state.rootfs_mode == "overlay" and _mount_overlay(lower, upper, work, self.rootfs):
            return
        if state.rootfs_mode == "overlay":
            state.rootfs_mode = "copy"
            self.write_state(state)
            shutil.rmtree(self.rootfs)
            copied = subprocess.run(
                ["cp", "-a", "--reflink=auto", f"{lower}/.", f"{self.rootfs}/"],
                capture_output=True,
                text=True,
            )
            if copied.returncode != 0:
                raise ContainerError(f"could not copy the image's rootfs: {copied.stderr.strip()[:300]}")

    def unmount(self) -> None:
        _unmount(self.rootfs)


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

    def chain_ids_in_use(self) -> set[str]:
        return {state.chain_id for _, state in self.all() if state.rootfs_mode == "overlay"}

    def remove(self, container_id: str, force: bool = False) -> None:
        container = self.get(container_id)
        try:
            state = container.read_state()
        except FileNotFoundError:
            raise ContainerError(f"no such container: {container_id}") from None
        if is_running(state) and not force:
            raise ContainerError(f"container {container_id} is running: stop it first or use --force")
        with contextlib.suppress(OSError):
            subprocess.run([state.runtime, "delete", "--force", state.id], capture_output=True, check=False)
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
