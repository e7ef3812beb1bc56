"""What `pier build` tests share: a base image in a fresh PIER_HOME, and reading what a build made.

The base is the busybox-static image of ``images.py`` loaded with ``pier load`` (so it is a
real local image, as ``FROM`` finds one), plus every busybox applet linked in ``/bin``: a
Dockerfile's RUN lines may use ``touch``, ``ln`` or ``chmod`` like on any small distribution.
"""

from __future__ import annotations

import atexit
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .helpers import run_pier
from .images import build_image

BASE = "localhost/busybox:base"


@dataclass
class Home:
    path: Path

    def pier(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_pier(self.path, *args, env=env)

    def build(
        self, context: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.pier("build", *args, str(context), env=env)

    def manifest(self, digest: str) -> dict:
        return json.loads(self.blob(digest))

    def blob(self, digest: str) -> bytes:
        algorithm, hexpart = digest.split(":")
        return (self.path / "blobs" / algorithm / hexpart).read_bytes()

    def config(self, digest: str) -> dict:
        return json.loads(self.blob(self.manifest(digest)["config"]["digest"]))

    def layer_members(self, descriptor: dict) -> dict[str, tarfile.TarInfo]:
        data = self.blob(descriptor["digest"])
        if descriptor["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {member.name: member for member in tar.getmembers()}

    def layer_file(self, descriptor: dict, name: str) -> bytes:
        data = self.blob(descriptor["digest"])
        if descriptor["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            extracted = tar.extractfile(name)
            assert extracted is not None
            return extracted.read()


_templates: dict[int, Path] = {}  # one base home per test process, copied for each test


def _template() -> Path:
    """A PIER_HOME holding the base, built once per process (a load and a RUN: a second each)."""
    found = _templates.get(os.getpid())
    if found is not None and found.exists():
        return found
    root = Path(tempfile.mkdtemp(prefix="pier-build-base-"))
    atexit.register(shutil.rmtree, root, True)
    layout = root / "base-layout"
    build_image(layout, "base", layers=[], cmd=["sh"])
    home = Home(root / "home")
    loaded = home.pier("load", str(layout), "--name", "localhost/busybox")
    assert loaded.returncode == 0, loaded.stderr
    context = root / "base-context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        'FROM localhost/busybox:base\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    )
    built = home.build(context, "-t", BASE, env={"SOURCE_DATE_EPOCH": "1700000000"})  # the same everywhere
    assert built.returncode == 0, built.stderr
    _templates[os.getpid()] = home.path
    return home.path


def make_home(tmp_path: Path, where: Path | None = None) -> Home:
    """A PIER_HOME (``where``, default ``tmp_path/home``) holding the busybox base as ``BASE``.

    A copy of one home made per process (``cp -a``: owners, modes and xattrs kept), so
    the tests share the base's layers' bytes but never one another's state.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    home = Home(where or tmp_path / "home")
    home.path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(_template()), str(home.path)], check=True)
    return home


def digest_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]
