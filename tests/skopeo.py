"""skopeo, run isolated from the machine's settings, as the interop tests' real client."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .servers import PierServer

TIMEOUT = 180.0  # seconds for one skopeo command; a hang is a failure, not a stuck run
# --preserve-digests: never rewrite a manifest or recompress a layer (skopeo 1.9 then
# silently ignores -f and --dest-compress-format instead of converting).
COPY_FLAGS = ("--quiet", "--preserve-digests")


class Skopeo:
    """Runs skopeo isolated from the machine's settings: own policy, auth file, HOME and tmp."""

    def __init__(self, executable: str, home: Path, registry: PierServer | None) -> None:
        self.executable = executable
        self.home = home
        self._registry = registry  # None: every command names its server (another registry)
        self.policy = home / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.authfile = home / "auth.json"
        self.authfile.write_text(json.dumps({"auths": {}}))
        for folder in ("registries.d", "tmp", "run"):
            (home / folder).mkdir()

    @property
    def registry(self) -> PierServer:
        """The pier server commands go to unless they name another."""
        if self._registry is None:
            raise AssertionError("this Skopeo has no default server: pass server=")
        return self._registry

    def run(
        self, command: str, *args: str, check: bool = True, server: PierServer | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one skopeo command; on failure show its stderr and the pier server's log."""
        options = ["--policy", str(self.policy), "--registries.d", str(self.home / "registries.d")]
        options += ["--tmpdir", str(self.home / "tmp")]
        argv = [self.executable, *options, command, "--authfile", str(self.authfile), *args]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.home / "run"),
            "TMPDIR": str(self.home / "tmp"),
        }
        try:
            result = subprocess.run(argv, capture_output=True, env=env, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"skopeo timed out after {TIMEOUT}s: {' '.join(argv)}\n{self._server_log(server)}")
        if check and result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")[-4000:]
            pytest.fail(
                f"skopeo failed with exit code {result.returncode}: {' '.join(argv)}\n"
                f"--- stderr ---\n{stderr}\n{self._server_log(server)}"
            )
        return result

    def json(self, command: str, *args: str) -> dict:
        return json.loads(self.run(command, *args).stdout)

    def _server_log(self, server: PierServer | None) -> str:
        logged = server or self._registry
        if logged is None:  # a test against another registry: its log is not pier's to show
            return ""
        return f"--- pier log (tail) ---\n{logged.log()[-4000:]}"

    # The transports a test needs, named once.
    def push(self, layout: Path, tag: str, repo: str, *flags: str, server: PierServer | None = None) -> None:
        source, destination = f"oci:{layout}:{tag}", f"docker://{(server or self.registry).host}/{repo}:{tag}"
        self.run("copy", *COPY_FLAGS, "--dest-tls-verify=false", *flags, source, destination, server=server)

    def pull(self, repo: str, tag: str, layout: Path, *flags: str, server: PierServer | None = None) -> None:
        source, destination = f"docker://{(server or self.registry).host}/{repo}:{tag}", f"oci:{layout}:{tag}"
        self.run("copy", *COPY_FLAGS, "--src-tls-verify=false", *flags, source, destination, server=server)
