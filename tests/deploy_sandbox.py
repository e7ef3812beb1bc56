"""The runtime rules of deploy/systemd/pier.service, applied to a process without systemd.

No systemd runs as PID 1 in the test machine (a container), so the unit itself cannot be
started. Three of its rules act inside the process, and are applied here the way systemd
252 applies them, then the process execs ``pier serve``:

- ``SystemCallFilter=``: a seccomp filter (libseccomp, Debian's python3-seccomp) allowing
  exactly the unit's groups as ``systemd-analyze syscall-filter`` expands them, ``@default``
  always, everything else failing with ``EPERM`` (the unit's ``SystemCallErrorNumber``).
- ``RestrictAddressFamilies=``: ``socket``/``socketpair`` only for the unit's families.
- ``MemoryDenyWriteExecute=yes``: the kernel's ``PR_SET_MDWE`` (no writable+executable
  mappings, no making memory executable), the rule systemd enforces with its own filter.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from .deploy_image import need, run

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-seccomp installs the module

LAUNCHER = """
import ctypes, errno, json, os, sys
import seccomp

spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: inherited, kept over exec
    sys.exit("PR_SET_MDWE failed: " + os.strerror(ctypes.get_errno()))
rules = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in spec["syscalls"]:
    try:
        rules.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError, OSError):
        pass  # a name of another architecture
for name in ("socket", "socketpair"):
    for family in spec["families"]:
        rules.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, family))
rules.load()
os.execv(spec["argv"][0], spec["argv"])
"""


def unit_settings(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def allowed_syscalls(analyze: str, unit: str) -> list[str]:
    """The system calls the unit's SystemCallFilter= lines permit, as systemd expands the groups."""
    groups: dict[str, list[str]] = {}
    current = ""
    for line in run([analyze, "syscall-filter", "--no-pager"]).stdout.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif line.startswith("    ") and current and not line.strip().startswith("#"):
            groups[current].append(line.strip())
        elif not line.strip():
            current = ""

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(item) for item in groups[name]))

    allowed: set[str] = set()
    denied: set[str] = set()
    for value in unit_settings(unit, "SystemCallFilter"):
        target = denied if value.startswith("~") else allowed
        for name in value.removeprefix("~").split():
            target |= expand(name)
    assert allowed, "the unit has no allow-list SystemCallFilter="
    return sorted(((allowed - denied) | expand("@default")) - {"socket", "socketpair"})


def sandboxed(unit_path: Path, argv: list[str]) -> list[str]:
    """``argv`` prefixed so that it runs under the unit's syscall, address-family and memory rules."""
    analyze = need("systemd-analyze", "systemd")
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True, check=False)
    if check.returncode != 0:
        pytest.fail("python3-seccomp is not installed (Debian: apt-get install python3-seccomp)")
    unit = unit_path.read_text()
    (families,) = unit_settings(unit, "RestrictAddressFamilies")
    assert unit_settings(unit, "SystemCallErrorNumber") == ["EPERM"]
    spec = {
        "syscalls": allowed_syscalls(analyze, unit),
        "families": [int(getattr(socket, name)) for name in families.split()],
        "argv": argv,
    }
    return [SYSTEM_PYTHON, "-c", LAUNCHER, json.dumps(spec)]
