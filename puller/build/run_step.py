"""A ``RUN`` step's process, under the OCI runtime ``pier run`` uses, with its output streamed.

The process gets docker's default capabilities for builds (``apt-get`` changes owners,
``pip`` sets modes), the host's network unless ``--network none``, and the mounts of its
``--mount`` flags. Its output goes to the user as it comes; the last lines are kept for
the error when it fails.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..run.oci_runtime import RunOptions, build_config, spec_template
from .sandbox import Sandbox

# docker's default set (moby oci/caps/defaults.go): what a Dockerfile's RUN may rely on.
BUILD_CAPABILITIES = [
    f"CAP_{name}"
    for name in (
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    )
]
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")  # what the host network needs inside, read-only
TAIL_LINES = 15


@dataclass
class Process:
    args: list[str]
    env: dict[str, str]
    cwd: str
    user: str | None
    network: str = "host"  # or "none"
    mounts: list[dict] = field(default_factory=list)  # OCI runtime mounts
    stdin: bytes | None = None


@dataclass
class Outcome:
    exit_code: int
    tail: list[str]


def mount_points(process: Process) -> tuple[list[str], list[str]]:
    """The files and directories the runtime mounts over: the sandbox provides them below the layers."""
    files = list(HOST_FILES) if process.network == "host" else []
    directories = []
    for mount in process.mounts:
        if mount.get("type") == "bind" and Path(mount["source"]).is_file():
            files.append(mount["destination"])
        else:
            directories.append(mount["destination"])
    return files, directories


def runtime_spec(sandbox: Sandbox, process: Process, runtime: str, home: Path) -> dict:
    image = {"config": {"Env": [f"{k}={v}" for k, v in process.env.items()], "WorkingDir": process.cwd}}
    options = RunOptions(command=process.args, user=process.user, network=process.network)
    spec = build_config(spec_template(runtime, home), sandbox.rootfs, image, options, "pier-build")
    capabilities = list(BUILD_CAPABILITIES)
    if process.network == "host":  # raw sockets in the host's network namespace: no
        capabilities.remove("CAP_NET_RAW")
    spec["process"]["capabilities"] = {kind: capabilities for kind in ("bounding", "effective", "permitted")}
    spec["process"]["noNewPrivileges"] = False
    spec["process"]["terminal"] = False
    if process.network == "host":
        spec["mounts"] += [
            {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}
            for path in HOST_FILES
        ]
    spec["mounts"] += process.mounts
    return spec


def run(
    sandbox: Sandbox, process: Process, runtime: str, home: Path, output: Callable[[str], None]
) -> Outcome:
    """Run ``process`` in ``sandbox``'s root filesystem; its exit code and last lines of output."""
    spec = runtime_spec(sandbox, process, runtime, home)
    config = sandbox.base / "config.json"  # may carry secrets given as env: the runtime's eyes only
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(spec))
    container_id = f"pier-build-{uuid.uuid4().hex[:12]}"
    sandbox.record_container(container_id, runtime)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    command = [runtime, "run", "--bundle", str(sandbox.base), container_id]
    stdin = subprocess.PIPE if process.stdin is not None else subprocess.DEVNULL
    with subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        try:
            if process.stdin is not None and child.stdin is not None:
                try:
                    child.stdin.write(process.stdin)
                    child.stdin.close()
                except BrokenPipeError:
                    pass
            assert child.stdout is not None
            for raw in child.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                tail.append(line)
                output(line)
            code = child.wait()
        except BaseException:
            subprocess.run([runtime, "delete", "--force", container_id], capture_output=True, check=False)
            child.kill()
            raise
    return Outcome(code, list(tail))
