"""Run an image's process in its own rootfs under an OCI runtime (runc or crun).

The bundle's ``config.json`` starts from the runtime's own ``spec`` template (its
defaults for namespaces, masked paths and capabilities) and is then given what the
image and the command line ask for: Entrypoint/Cmd, Env, WorkingDir, User, bind
mounts, network namespace, and cgroup limits for memory, CPU and processes.

The runtime is chosen by the machine's cgroup layout: crun starts faster, but crun
1.8 refuses the hybrid layout (v1 controllers beside an empty v2 hierarchy) with
"cgroups in hybrid mode not supported", so there runc goes first.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PierError
from ..store.content_store import ContentStore
from ..store.image import Image
from ..unpack.layers import UnsafeLayer, resolve_inside
from ..unpack.rootfs import LayerProgress, image_layers
from .containers import ContainerError, Containers, ContainerState

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgKMG]?)[bB]?")
CPU_PERIOD = 100_000
CGROUP_ROOT = Path("/sys/fs/cgroup")


class RunError(PierError):
    pass


class CommandNotRunnable(RunError):
    """The process cannot start: docker's wording, and its exit code (127 missing, 126 not executable)."""

    def __init__(self, command: str, reason: str, exit_code: int) -> None:
        super().__init__(f"exec: {json.dumps(command)}: {reason}")
        self.exit_code = exit_code


MAX_SYMLINK_HOPS = 40  # the kernel's limit (ELOOP)


def _container_path(rootfs: Path, path: str, mounts: frozenset[str]) -> str | None:
    """``path`` (absolute, in the container) with every symlink followed as the container would.

    Symlinks are read inside ``rootfs`` only: an absolute target restarts at the rootfs,
    and ``..`` stops at its top, as at the real root. None when the path goes through a
    mount point (what is there is known only once the runtime mounts it) or loops.
    """
    pending = [part for part in path.split("/") if part][::-1]  # a stack: next component last
    current: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        current.append(part)
        if "/" + "/".join(current) in mounts:
            return None
        try:
            info = os.lstat(os.path.join(rootfs, *current))
        except OSError:  # missing, or below a file: the stat at the end says so
            continue
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None
            target = os.readlink(os.path.join(rootfs, *current))
            current.pop()
            if target.startswith("/"):
                current = []
            pending.extend(part for part in reversed(target.split("/")) if part)
    return "/" + "/".join(current)


def _may_execute(info: os.stat_result, user: dict) -> bool:
    """Whether the container's user may execute a file of this mode (root: any x bit will do)."""
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    if uid == 0:
        return bool(info.st_mode & 0o111)
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _executable_error(
    rootfs: Path, path: str, shown: str, mounts: frozenset[str], user: dict
) -> tuple[str, int] | None:
    """Why the runtime could not exec ``path`` (Go's ``exec.LookPath`` wording), or None if it can."""
    resolved = _container_path(rootfs, path, mounts)
    if resolved is None:
        return None
    try:
        info = os.lstat(os.path.join(rootfs, resolved.lstrip("/")))
    except OSError as exc:
        return f"stat {shown}: {os.strerror(exc.errno or 2).lower()}", 127
    if stat.S_ISDIR(info.st_mode):
        return "is a directory", 126
    if not stat.S_ISREG(info.st_mode) or not _may_execute(info, user):
        return "permission denied", 126
    return None


def check_command(
    rootfs: Path, args: list[str], path_env: str, cwd: str, mounts: list[str], user: dict | None = None
) -> None:
    """Refuse, before the runtime starts, a command the container could not execute.

    The lookup is the runtime's (``$PATH`` of the process, or the path itself when it has
    a slash), done in the rootfs as ``user`` (uid, gid): the runtime would only log a line
    and exit 1.
    """
    user = user or {"uid": 0, "gid": 0}
    points = frozenset(p for p in (_container_path(rootfs, m, frozenset()) for m in mounts) if p)
    command = args[0]
    if "/" in command:
        error = _executable_error(rootfs, posixpath.join(cwd, command), command, points, user)
        if error:
            raise CommandNotRunnable(command, *error)
        return
    for directory in path_env.split(":"):
        candidate = posixpath.join(cwd, directory or ".", command)
        if _executable_error(rootfs, candidate, candidate, points, user) is None:
            return
    raise CommandNotRunnable(command, "executable file not found in $PATH", 127)


@dataclass
class RunOptions:
    command: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    volumes: list[str] = field(default_factory=list)
    # Artifacts mounted read-only: (their layer directories, the target in the container, their keys).
    artifact_mounts: list[tuple[list[Path], str, list[str]]] = field(default_factory=list)
    network: str = "none"
    memory: str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    interactive: bool = False
    tty: bool = False
    name: str | None = None
    remove: bool = False
    runtime: str | None = None
    read_only: bool = False


def cgroup_layout(root: Path = CGROUP_ROOT) -> str:
    """``unified`` (v2 only), ``hybrid`` (v1 controllers and a v2 mount) or ``legacy`` (v1 only)."""
    if (root / "cgroup.controllers").exists():
        return "unified"
    if (root / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    return "legacy"


def find_runtime(preferred: str | None, layout: str | None = None) -> str:
    """The runtime to use: ``preferred`` if given, else the first that works with this cgroup layout."""
    if preferred:
        path = shutil.which(preferred)
        if path is None:
            raise RunError(f"OCI runtime {preferred!r} not found on PATH")
        return path
    layout = layout or cgroup_layout()
    candidates = ["runc"] if layout == "hybrid" else ["crun", "runc"]
    for candidate in candidates:
        if path := shutil.which(candidate):
            return path
    if layout == "hybrid" and shutil.which("crun"):
        raise RunError(
            "only crun is installed, and crun does not support this machine's hybrid cgroup layout: "
            "install runc (or pass --runtime crun to try anyway)"
        )
    raise RunError("no OCI runtime found on PATH: install runc or crun")


def parse_memory(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise RunError(f"invalid --memory {text!r}: use e.g. 512m or 2g")
    return int(float(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " "))


def _entries(rootfs: Path, table: str) -> list[list[str]]:
    """Rows of the image's /etc/passwd or /etc/group, its symlinks resolved inside the rootfs.

    A hostile image may make /etc/passwd a symlink to the host's /etc/shadow: the path is
    resolved as the container would see it, never on the host.
    """
    try:
        path = resolve_inside(rootfs, f"etc/{table}")
        if path.is_symlink() or not path.is_file():
            return []
        return [line.split(":") for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError, UnsafeLayer):
        return []


def _id(text: str) -> bool:
    """A uid or gid: ASCII digits only ("²" is ``isdigit`` but not a number ``int`` reads)."""
    return text.isascii() and text.isdigit()


def resolve_user(rootfs: Path, spec: str | None) -> dict:
    """``user``, ``uid``, ``user:group`` or ``uid:gid``, looked up in the image's own files."""
    if not spec:
        return {"uid": 0, "gid": 0}
    user, _, group = spec.partition(":")
    passwd = [row for row in _entries(rootfs, "passwd") if len(row) > 3 and _id(row[2]) and _id(row[3])]
    match = [row for row in passwd if (row[2] if _id(user) else row[0]) == user]
    if not match and not _id(user):
        raise RunError(f"user {user!r} not found in the image's /etc/passwd")
    uid = int(user) if _id(user) else int(match[0][2])
    gid = int(match[0][3]) if match else 0
    if group:
        if _id(group):
            gid = int(group)
        else:
            rows = [
                row for row in _entries(rootfs, "group") if len(row) > 2 and row[0] == group and _id(row[2])
            ]
            if not rows:
                raise RunError(f"group {group!r} not found in the image's /etc/group")
            gid = int(rows[0][2])
    return {"uid": uid, "gid": gid}


def build_config(
    template: dict,
    rootfs: Path,
    config: dict,
    options: RunOptions,
    hostname: str,
    artifact_views: list[tuple[Path, str]] | None = None,
) -> dict:
    """The runtime spec; ``artifact_views`` are (read-only view, target) of mounted artifacts."""
    image = config.get("config") or {}
    entrypoint = image.get("Entrypoint") or []
    args = entrypoint + (options.command or image.get("Cmd") or [])
    if not args:
        raise RunError("the image has no Entrypoint or Cmd, and no command was given")
    env = dict(item.split("=", 1) for item in image.get("Env") or [] if "=" in item)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    for item in options.env:
        key, sep, value = item.partition("=")
        env[key] = value if sep else os.environ.get(key, "")
    if options.tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    spec = json.loads(json.dumps(template))
    process = spec["process"]
    process.update(
        terminal=options.tty,
        args=args,
        env=[f"{k}={v}" for k, v in env.items()],
        cwd=options.workdir or image.get("WorkingDir") or "/",
        user=resolve_user(rootfs, options.user or image.get("User")),
    )
    spec["root"] = {"path": str(rootfs), "readonly": options.read_only}
    spec["hostname"] = hostname
    linux = spec.setdefault("linux", {})
    if options.network == "host":
        linux["namespaces"] = [ns for ns in linux.get("namespaces", []) if ns["type"] != "network"]
    elif options.network != "none":
        raise RunError(f"--network {options.network!r}: only host and none are supported")
    resources = linux.setdefault("resources", {})
    if options.memory:
        resources["memory"] = {"limit": parse_memory(options.memory)}
    if options.cpus:
        resources["cpu"] = {"quota": int(options.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    if options.pids_limit:
        resources["pids"] = {"limit": options.pids_limit}
    for volume in options.volumes:
        parts = volume.split(":")
        if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
            raise RunError(f"invalid -v {volume!r}: use /host/path:/container/path[:ro]")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise RunError(f"invalid -v {volume!r}: the mode must be ro or rw")
        if not os.path.exists(parts[0]):
            raise RunError(f"-v {volume!r}: {parts[0]} does not exist")
        # The runtime creates a missing destination itself, resolved safely inside the rootfs.
        spec["mounts"].append(
            {"destination": parts[1], "type": "bind", "source": parts[0], "options": ["rbind", mode]}
        )
    for view, target in artifact_views or []:
        spec["mounts"].append(
            {
                "destination": target,
                "type": "bind",
                "source": str(view),
                "options": ["rbind", "ro", "nosuid", "nodev"],
            }
        )
    mounts = [m["destination"] for m in spec.get("mounts", []) if isinstance(m.get("destination"), str)]
    check_command(rootfs, args, env["PATH"], process["cwd"], mounts, process["user"])
    return spec


def spec_template(runtime: str, home: Path) -> dict:
    """The runtime's own ``spec`` template, asked once per runtime binary and kept in the store.

    Its defaults (namespaces, masked paths, capabilities) are the runtime's; asking for
    them costs a process per container, so they are kept, keyed by the binary's identity.
    """
    info = os.stat(runtime)
    key = hashlib.sha256(f"{runtime}:{info.st_size}:{info.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = home / "runtime-specs" / f"{key}.json"
    try:
        return dict(json.loads(cached.read_text()))
    except (OSError, ValueError):
        pass
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as bundle:
        made = subprocess.run(
            [runtime, "spec", "--bundle", bundle], capture_output=True, text=True, check=False
        )
        if made.returncode != 0:
            raise RunError(f"{runtime} spec failed: {made.stderr.strip()[:300]}")
        text = (Path(bundle) / "config.json").read_text()
    temporary = cached.with_name(f".{cached.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, cached)
    return dict(json.loads(text))


def run(
    store: ContentStore,
    image: Image,
    image_name: str,
    options: RunOptions,
    progress: LayerProgress | None = None,
    notice: Callable[[str], None] | None = None,
) -> int:
    """Run ``image``'s process; its exit code is returned as the container's.

    ``notice`` hears why, when the container got a copy of its layers instead of an overlay.
    """
    runtime = find_runtime(options.runtime)
    container_id = options.name or f"pier-{uuid.uuid4().hex[:12]}"
    state = ContainerState(
        id=container_id,
        image=image_name,
        digest=image.digest,
        chain_id=image.chain_id,
        command=options.command,
        runtime=runtime,
        layers=image.diff_ids,
        mounted_layers=[key for _, _, keys in options.artifact_mounts for key in keys],
    )
    containers = Containers(store.root)
    try:
        containers.get(container_id)
    except ContainerError as exc:
        raise RunError(str(exc)) from None
    with store.lock():  # shared: no prune removes a layer before the container's state names it
        layers = image_layers(store, image, progress)
        try:
            container = containers.create(state)
        except ContainerError as exc:
            raise RunError(str(exc)) from None
        try:
            container.mount(layers, state)
            views = [
                (container.mount_artifact(number, lowers), target)
                for number, (lowers, target, _) in enumerate(options.artifact_mounts)
            ]
        except BaseException:
            containers.remove(container_id, force=True)
            raise
    if state.rootfs_mode == "copy" and notice is not None:
        notice(state.copy_reason)
    finished = False
    try:
        spec_path = container.directory / "config.json"
        spec = build_config(
            spec_template(runtime, store.root), container.rootfs, image.config, options, container_id, views
        )
        spec_path.write_text(json.dumps(spec, indent=2))
        state.command = spec["process"]["args"]
        state.status = "running"
        container.write_state(state)
        stdin = None if options.interactive or options.tty else subprocess.DEVNULL
        completed = subprocess.run(
            [runtime, "run", "--bundle", str(container.directory), container_id], stdin=stdin, check=False
        )
        finished = True  # ``run`` deletes the runtime's container when its process exits
        state.status, state.exit_code = "exited", completed.returncode
        container.write_state(state)
        return completed.returncode
    except BaseException as exc:
        if state.status != "exited":
            state.status = "exited"
            state.exit_code = exc.exit_code if isinstance(exc, CommandNotRunnable) else None
            container.write_state(state)
        raise
    finally:
        if not finished:
            subprocess.run([runtime, "delete", "--force", container_id], capture_output=True, check=False)
        container.unmount()
        if options.remove:
            containers.remove(container_id, force=True)
