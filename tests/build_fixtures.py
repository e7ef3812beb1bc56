"""What `pier build` tests share: a base image in a fresh PIER_HOME, and reading what a build made.

The base is the busybox-static image of ``images.py`` loaded with ``pier load`` (so it is a
real local image, as ``FROM`` finds one), plus every busybox applet linked in ``/bin``: a
Dockerfile's RUN lines may use ``touch``, ``ln`` or ``chmod`` like on any small distribution.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
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


def make_home(tmp_path: Path, where: Path | None = None) -> Home:
    """A PIER_HOME (``where``, default ``tmp_path/home``) holding the busybox base as ``BASE``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    layout = tmp_path / "base-layout"
    build_image(layout, "base", layers=[], cmd=["sh"])
    home = Home(where or tmp_path / "home")
    loaded = home.pier("load", str(layout), "--name", "localhost/busybox")
    assert loaded.returncode == 0, loaded.stderr
    context = tmp_path / "base-context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        'FROM localhost/busybox:base\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    )
    built = home.build(context, "-t", BASE, env={"SOURCE_DATE_EPOCH": "1700000000"})  # the same everywhere
    assert built.returncode == 0, built.stderr
    return home


def digest_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]
