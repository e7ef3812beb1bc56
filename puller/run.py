"""Run an image's process in its own rootfs under an OCI runtime (runc or crun).

The bundle's ``config.json`` starts from the runtime's own ``spec`` template (its
defaults for namespaces, masked paths and capabilities) and is then given what the
image and the command line ask for: Entrypoint/Cmd, Env, WorkingDir, User, bind
mounts, network namespace, and cgroup limits for memory, CPU and processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .content_store import ContentStore
from .pull import INDEX_TYPES, Platform
from .unpack import apply_layer

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgKMG]?)[bB]?")
CPU_PERIOD = 100_000


class RunError(Exception):
    pass


@dataclass
class RunOptions:
    command: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    volumes: list[str] = field(default_factory=list)
    network: str = "none"
    memory: str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    interactive: bool = False
    tty: bool = False
    name: str | None = None
    remove: bool = False
    runtime: str | None = None


def find_runtime(preferred: str | None) -> str:
    candidates = [preferred] if preferred else ["runc", "crun"]
    for candidate in candidates:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    raise RunError(f"no OCI runtime found on PATH (looked for {', '.join(c for c in candidates if c)})")


def parse_memory(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise RunError(f"invalid --memory {text!r}: use e.g. 512m or 2g")
    return int(float(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " "))


def _stored(store: ContentStore, digest: str) -> bytes:
    try:
        return store.read(digest)
    except FileNotFoundError:
        raise RunError(
            f"{digest} is not in the local store: pull the image (for this platform) again"
        ) from None


def image_config(store: ContentStore, digest: str, platform: Platform) -> tuple[dict, list[dict]]:
    """(config, layer descriptors) of a stored image; an index is narrowed to ``platform``."""
    manifest = json.loads(_stored(store, digest))
    if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
        for entry in manifest.get("manifests", []):
            if platform.matches(entry.get("platform", {})):
                manifest = json.loads(_stored(store, entry["digest"]))
                break
        else:
            raise RunError(f"the stored index has no image for {platform}")
    for layer in manifest["layers"]:
        if not store.has(layer["digest"]):
            raise RunError(f"layer {layer['digest']} is not in the local store: pull the image again")
    return json.loads(_stored(store, manifest["config"]["digest"])), manifest["layers"]


def _entries(rootfs: Path, table: str) -> list[list[str]]:
    """Rows of the image's /etc/passwd or /etc/group (read as plain files, never followed out)."""
    try:
        return [line.split(":") for line in (rootfs / "etc" / table).read_text().splitlines()]
    except (OSError, UnicodeDecodeError):
        return []


def resolve_user(rootfs: Path, spec: str | None) -> dict:
    """``user``, ``uid``, ``user:group`` or ``uid:gid``, looked up in the image's own files."""
    if not spec:
        return {"uid": 0, "gid": 0}
    user, _, group = spec.partition(":")
    passwd = [
        row for row in _entries(rootfs, "passwd") if len(row) > 3 and row[2].isdigit() and row[3].isdigit()
    ]
    match = [row for row in passwd if (row[2] if user.isdigit() else row[0]) == user]
    if not match and not user.isdigit():
        raise RunError(f"user {user!r} not found in the image's /etc/passwd")
    uid = int(user) if user.isdigit() else int(match[0][2])
    gid = int(match[0][3]) if match else 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            rows = [
                row
                for row in _entries(rootfs, "group")
                if len(row) > 2 and row[0] == group and row[2].isdigit()
            ]
            if not rows:
                raise RunError(f"group {group!r} not found in the image's /etc/group")
            gid = int(rows[0][2])
    return {"uid": uid, "gid": gid}


def build_config(template: dict, rootfs: Path, config: dict, options: RunOptions, hostname: str) -> dict:
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
    spec["root"] = {"path": str(rootfs), "readonly": False}
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
        spec["mounts"].append(
            {"destination": parts[1], "type": "bind", "source": parts[0], "options": ["rbind", mode]}
        )
        (rootfs / parts[1].lstrip("/")).mkdir(parents=True, exist_ok=True)
    return spec


def run(store: ContentStore, digest: str, platform: Platform, options: RunOptions) -> int:
    runtime = find_runtime(options.runtime)
    config, layers = image_config(store, digest, platform)
    container_id = options.name or f"pier-{uuid.uuid4().hex[:12]}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", container_id):
        raise RunError(f"invalid container name {container_id!r}")
    bundle = store.root / "containers" / container_id
    if bundle.exists():
        raise RunError(f"a container named {container_id} already exists ({bundle})")
    rootfs = bundle / "rootfs"
    try:
        for layer in layers:
            with store.path(layer["digest"]).open("rb") as stream:
                apply_layer(rootfs, stream, layer["mediaType"], layer["digest"])
        template = subprocess.run(
            [runtime, "spec", "--bundle", str(bundle)], capture_output=True, text=True, check=False
        )
        if template.returncode != 0:
            raise RunError(f"{runtime} spec failed: {template.stderr.strip()[:300]}")
        spec_path = bundle / "config.json"
        spec = build_config(json.loads(spec_path.read_text()), rootfs, config, options, container_id)
        spec_path.write_text(json.dumps(spec, indent=2))
        stdin = None if options.interactive or options.tty else subprocess.DEVNULL
        completed = subprocess.run(
            [runtime, "run", "--bundle", str(bundle), container_id], stdin=stdin, check=False
        )
        return completed.returncode
    finally:
        if options.remove:
            subprocess.run([runtime, "delete", "--force", container_id], capture_output=True, check=False)
            shutil.rmtree(bundle, ignore_errors=True)
