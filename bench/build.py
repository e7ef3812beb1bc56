#!/usr/bin/env python3
"""pier build beside buildah bud: the same Dockerfile, the same context, the same base image.

The base is ``debootstrap --variant=minbase bookworm`` (one gzip layer, built once and cached
under bench/.cache/build/). The script starts Debian's ``docker-registry`` (distribution 2.8)
on a free loopback port with a fresh data folder, pushes the base there with skopeo, and
writes a generated build context: a src tree of a few hundred files, a requirements.txt, a
few scripts and a config, and a two-stage Dockerfile (RUN steps doing shell work with no
network: files made with awk, a compile-like loop with sed and awk, a tar, an ``rm`` of base
files; COPY, COPY --from, --chown, --chmod; ENV, WORKDIR, ARG, USER, CMD). Then, in one run:

1. Cold build, each round in a fresh state: pier in a new PIER_HOME, buildah in a new
   ``--root``, each with the base pulled beforehand (untimed). The order alternates.
2. No-change rebuild in the last round's warm state (``buildah bud --layers``).
3. Rebuild after changing one copied source file (new content each round), with the steps
   that ran (pier prints ``CACHED`` under each cached step, buildah ``Using cache``).
4. Reproducibility: two pier builds with SOURCE_DATE_EPOCH, in different context
   directories and PIER_HOMEs, seconds apart: the two image digests.
5. File trees: ``pier unpack`` of pier's image against ``umoci unpack`` of buildah's
   (``buildah push oci:``), entry by entry (type, mode, owner, bytes, link target, xattrs,
   hardlinks; no times, and not buildah's empty mount points). pier's image pushed to the
   registry with ``pier push``, then copied with ``skopeo copy`` (and that copy unpacked by
   umoci and compared with ``pier unpack`` too), pulled with ``podman pull`` and run with
   ``podman run`` and with ``pier run`` from a fresh PIER_HOME.

Every timed command is one process run, start-up included, after an untimed ``sync``; each
timed phase starts after a 65 s wait (``settle()``). Nothing is deleted until the run ends
(see ``fresh()`` in bench/pull_unpack.py); every process started is stopped by PID and every
mount buildah or podman left under the temporary folder is unmounted before it is removed.

    .venv/bin/python bench/build.py [--rounds 5] [--pier-rev HEAD] [--profile] [--json out.json]

See bench/README.md, section "Build (issue 21)".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import layer_store  # bench/layer_store.py: write_image (an OCI layout from layer blobs)
import pull_unpack as base  # bench/pull_unpack.py: debootstrap, pack_layer, Skopeo, fresh
from servers import REPO_ROOT, Server, start_distribution  # bench/servers.py

MIB = 1024 * 1024
CACHE = REPO_ROOT / "bench" / ".cache" / "build" / "v1"
PIER = base.PIER
PIER_ARGV = [str(PIER)]  # or, with --pier-rev, the venv's python -P -m puller on an exported tree
PIER_SOURCE: Path | None = None
SETTLE_AFTER_BUILD = 65  # seconds: ext4's "recently deleted" inode window (bench/pull_unpack.py)
EPOCH = "1700000000"
CHANGED_FILE = "src/lib/mod007.c"
# buildah leaves these in its images: empty files (or a directory) it bind-mounts during RUN
BUILDAH_MOUNT_POINTS = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "run/secrets", "run")

DOCKERFILE = r"""# bench/build.py: two stages on a Debian minbase base; no RUN needs the network
ARG BASE
FROM ${BASE} AS build
ARG JOBS=2
ENV LANG=C.UTF-8 \
    BUILD_ROOT=/build
WORKDIR /build
COPY requirements.txt ./
# "install the requirements": a package directory of generated modules per line
RUN mkdir -p /opt/venv/lib /opt/venv/bin && \
    sed -e 's/#.*//' -e '/^[[:space:]]*$/d' requirements.txt | tr -d ' ' | awk -F'==' '{ print $1, $2 }' | \
    while read name version; do \
      d=/opt/venv/lib/$name-$version; mkdir -p "$d"; \
      awk -v n="$name" -v v="$version" -v d="$d" 'BEGIN { for (i = 0; i < 12; i++) { \
        f = sprintf("%s/mod%02d.py", d, i); \
        printf "# %s %s module %d\nVALUE = %d\n", n, v, i, i * length(n) > f; close(f) } }'; \
      printf '#!/bin/sh\necho %s %s\n' "$name" "$version" > /opt/venv/bin/$name; \
      chmod 755 /opt/venv/bin/$name; \
    done && \
    find /opt/venv -type f | LC_ALL=C sort | xargs cat | md5sum | cut -d' ' -f1 > /opt/venv/RECORD
COPY src/ ./src/
# "compile": every .c file through sed and awk into an object, then a checksum of them all
RUN mkdir -p obj && \
    for f in src/lib/*.c; do \
      o=obj/$(basename "$f" .c).o; \
      sed -e 's/[[:space:]][[:space:]]*/ /g' -e '/^ *$/d' -e 's/^ //' "$f" | \
        awk '{ n += length($0); h = (h * 33 + length($0)) % 65521; print NR ": " $0 } \
             END { print "bytes", n, "hash", h }' > "$o"; \
    done && \
    cat obj/*.o | awk '{ s = (s * 31 + length($0)) % 1000003 } END { print s }' > obj/checksum && \
    test "$(ls obj/*.o | wc -l)" -gt 100
RUN mkdir -p out/bin out/lib out/share/doc && \
    cat obj/*.o > out/lib/libapp.a && \
    cp -r src/app out/share/app && cp src/include/*.h out/share/doc/ && \
    printf '#!/bin/sh\necho "app $APP_VERSION checksum %s"\n' "$(cat obj/checksum)" > out/bin/app && \
    chmod 755 out/bin/app && \
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C out -cf /build/app.tar .

FROM ${BASE}
ARG APP_VERSION=1.4.2
ENV APP_HOME=/opt/app \
    PATH=/opt/app/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    APP_VERSION=${APP_VERSION}
RUN echo 'app:x:1000:1000:app:/opt/app:/bin/sh' >> /etc/passwd && \
    echo 'app:x:1000:' >> /etc/group && \
    rm -f /etc/issue.net /etc/motd && \
    rm -rf /usr/share/doc/* /usr/share/man/* /var/log/apt && \
    mkdir -p /var/lib/app && chmod 0750 /var/lib/app && chown 1000:1000 /var/lib/app
WORKDIR /opt/app
COPY requirements.txt ./
COPY --from=build /opt/venv /opt/venv
COPY --from=build /build/app.tar /tmp/app.tar
RUN tar -xf /tmp/app.tar -C /opt/app && rm /tmp/app.tar && \
    ln -s /opt/app/bin/app /usr/local/bin/app && ln -s lib/libapp.a libapp.current
COPY --chown=1000:1000 src/app ./src/
COPY --chmod=755 scripts/ ./bin/
COPY config/app.conf /etc/app/app.conf
RUN sed -i "s/@VERSION@/${APP_VERSION}/" /etc/app/app.conf && \
    n=$(find /opt/app -type f | wc -l) && echo "$n" > /opt/app/FILES && \
    mkdir -p var/cache && chown -R 1000:1000 var && \
    cat /opt/venv/RECORD > /opt/app/RECORD
USER 1000
CMD ["/opt/app/bin/start.sh"]
"""

START_SCRIPT = """#!/bin/sh
set -e
echo "start $APP_VERSION files=$(cat /opt/app/FILES) venv=$(ls /opt/venv/lib | wc -l) user=$(id -u)"
/opt/app/bin/app
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the base image ----------------------------------------------------------------------


def write_base_image(layout: Path, layer: base.LayerInfo) -> None:
    """Config, manifest and index for the one-layer base (with a history: buildah requires one)."""
    architecture = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/bash"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "debootstrap --variant=minbase bookworm"}
        ],
    }
    config_digest, config_size = base._write_blob(layout, json.dumps(config, indent=2).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": base.OCI_MANIFEST,
        "config": {"mediaType": base.OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": base.OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}],
    }
    manifest_digest, manifest_size = base._write_blob(layout, json.dumps(manifest, indent=2).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": base.OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {base.REF_NAME: "base"},
            }
        ],
    }
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps(index, indent=2))


def base_image() -> tuple[Path, base.LayerInfo, bool]:
    """(the OCI layout tagged ``base``, its one layer, built just now): debootstrap minbase, cached."""
    info_path = CACHE / "layer.json"
    if info_path.is_file():
        layer = base.LayerInfo(**json.loads(info_path.read_text()))
        if base._blob_path(CACHE / "layout", layer.digest).is_file():
            log(f"using the cached base layer in {CACHE}")
            write_base_image(CACHE / "layout", layer)
            return CACHE / "layout", layer, False
    log(f"building the base image into {CACHE}")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    building = CACHE.parent / f".{CACHE.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    layout = building / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="pier-bench-base-"))
    try:
        tree = scratch / "rootfs"
        base.debootstrap(tree)  # debootstrap --variant=minbase bookworm from deb.debian.org
        layer = base.pack_layer(layout, "base", tree, ("dev", "proc", "sys", "run", "tmp"))
        write_base_image(layout, layer)
        (building / "layer.json").write_text(json.dumps(dataclasses.asdict(layer), indent=2))
        shutil.rmtree(CACHE, ignore_errors=True)
        os.rename(building, CACHE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(building, ignore_errors=True)
    return CACHE / "layout", layer, True


# -- the build context -------------------------------------------------------------------


def _c_source(rng: random.Random, number: int) -> str:
    lines = [f"/* mod{number:03d}.c: generated */", '#include "app.h"', ""]
    for function in range(rng.randint(6, 18)):
        lines.append(f"static int f{number}_{function}(int a, int b)")
        lines.append("{")
        for _ in range(rng.randint(3, 12)):
            op = rng.choice("+-*^|&")
            lines.append(f"    a = (a {op} {rng.randint(1, 9999)})   ^  (b << {rng.randint(0, 7)});")
        lines.append("    return a;")
        lines.append("}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_context(directory: Path) -> dict[str, int]:
    """The generated build context (the same bytes every run); counts of what it holds."""
    rng = random.Random(21)
    (directory / "Dockerfile").write_text(DOCKERFILE)
    (directory / ".dockerignore").write_text("**/*.tmp\nnotes/\n")
    names = sorted({f"pkg{rng.randint(0, 9999):04d}" for _ in range(48)})
    requirements = ["# generated: one package per line", ""]
    requirements += [
        f"{name}=={rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}" for name in names
    ]
    (directory / "requirements.txt").write_text("\n".join(requirements) + "\n")
    files = 0
    lib = directory / "src" / "lib"
    lib.mkdir(parents=True)
    for number in range(140):
        (lib / f"mod{number:03d}.c").write_text(_c_source(rng, number))
        files += 1
    include = directory / "src" / "include"
    include.mkdir()
    for number in range(20):
        body = "".join(f"int f{number}_{i}(int a, int b);\n" for i in range(rng.randint(5, 30)))
        (include / f"h{number:02d}.h").write_text(f"#pragma once\n{body}")
        files += 1
    for package in range(16):
        folder = directory / "src" / "app" / f"pkg{package:02d}"
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        files += 1
        for module in range(rng.randint(8, 14)):
            body = "".join(
                f"def fn_{module}_{i}(x):\n    return x * {rng.randint(2, 97)} + {rng.randint(0, 999)}\n\n"
                for i in range(rng.randint(4, 40))
            )
            (folder / f"module{module:02d}.py").write_text(body)
            files += 1
        (folder / "scratch.tmp").write_text("ignored by .dockerignore\n")  # never copied
    data = directory / "src" / "app" / "data"
    data.mkdir()
    (data / "blob.bin").write_bytes(rng.randbytes(512 * 1024))  # one binary file
    (data / "table.csv").write_text("".join(f"{i},{rng.random():.6f}\n" for i in range(5000)))
    os.symlink("pkg00", directory / "src" / "app" / "current")
    files += 3
    scripts = directory / "scripts"
    scripts.mkdir()
    (scripts / "start.sh").write_text(START_SCRIPT)
    (scripts / "health.sh").write_text("#!/bin/sh\ntest -s /opt/app/FILES\n")
    (scripts / "README").write_text("made executable by COPY --chmod\n")
    (directory / "config").mkdir()
    (directory / "config" / "app.conf").write_text("version = @VERSION@\nworkers = 2\nlog = /var/log/app\n")
    (directory / "notes").mkdir()
    (directory / "notes" / "todo.txt").write_text("ignored by .dockerignore\n")
    return {"src_files": files, "context_files": sum(1 for p in directory.rglob("*") if not p.is_dir())}


def changed_source(number: int) -> str:
    return _c_source(random.Random(1000 + number), 7) + f"/* change {number} */\n"


# -- running commands --------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    seconds: float
    cpu: float  # user + system of the command and the children it waited for
    stdout: str
    stderr: str


def run_timed(argv: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> Run:
    """Run one command to completion; its wall and CPU time. ``sync`` first, untimed."""
    os.sync()  # the previous step's dirty pages are not flushed during this one
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, env=env, timeout=timeout, check=False, text=True)
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(seconds, cpu, result.stdout, result.stderr)


def check(argv: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    result = subprocess.run(argv, capture_output=True, env=env, timeout=timeout, check=False, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result.stdout


def attempt(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> tuple[bool, str]:
    """(it worked, the last of its output): for the interoperability checks, which report failures."""
    try:
        result = subprocess.run(argv, capture_output=True, env=env, timeout=timeout, check=False, text=True)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s"
    text = (result.stdout + result.stderr).strip()
    return result.returncode == 0, text[-600:]


@dataclasses.dataclass
class Step:
    text: str
    cached: bool


def pier_steps(stderr: str) -> list[Step]:
    """``[stage n/m] INSTRUCTION`` lines and, under each, ``CACHED`` or ``DONE``."""
    steps: list[Step] = []
    for line in stderr.splitlines():
        if re.match(r"^\[[^\]]*\d+/\d+\] ", line):
            steps.append(Step(line, False))
        elif line.strip() == "CACHED" and steps:
            steps[-1].cached = True
    return steps


def buildah_steps(stdout: str) -> list[Step]:
    """``[stage/stages] STEP n/m: INSTRUCTION`` lines and, under each, ``--> Using cache``."""
    steps: list[Step] = []
    for line in stdout.splitlines():
        if re.match(r"^(\[\d+/\d+\] )?STEP \d+/\d+: ", line):
            steps.append(Step(line, False))
        elif line.startswith("--> Using cache") and steps:
            steps[-1].cached = True
    return steps


def step_times(runs: list[Run]) -> dict[str, Any]:
    """pier's ``DONE n.ns`` per step, median over the runs, beside the median wall time."""
    per_step: dict[str, list[float]] = {}
    for result in runs:
        current = None
        for line in result.stderr.splitlines():
            if re.match(r"^\[[^\]]*\d+/\d+\] ", line):
                current = line[:90]
            elif (found := re.match(r"^\s+DONE ([0-9.]+)s$", line)) and current:
                per_step.setdefault(current, []).append(float(found.group(1)))
    steps = {name: median(values) for name, values in per_step.items()}
    return {"steps": steps, "sum": sum(steps.values()), "wall": median([r.seconds for r in runs])}


def ran(steps: list[Step]) -> list[str]:
    """The steps that ran (not cached), FROM lines and config-only instructions left out."""
    work = re.compile(r"(\] |: )(RUN|COPY|ADD|WORKDIR)\b")
    return [step.text for step in steps if not step.cached and work.search(step.text)]


# -- the two builders ---------------------------------------------------------------------


class PierSide:
    def __init__(self, home: Path, base_ref: str) -> None:
        self.home = home
        self.env = base.pier_env(home)
        if PIER_SOURCE is not None:
            self.env["PYTHONPATH"] = str(PIER_SOURCE)
        self.base_ref = base_ref

    def pull_base(self) -> None:
        check([*PIER_ARGV, "pull", "-q", self.base_ref], self.env)

    def build(self, context: Path, tag: str, env: dict[str, str] | None = None) -> tuple[Run, str]:
        argv = [*PIER_ARGV, "build", "-t", tag, "--build-arg", f"BASE={self.base_ref}", str(context)]
        result = run_timed(argv, {**self.env, **(env or {})})
        digest = result.stdout.strip().splitlines()[-1]
        if not digest.startswith("sha256:"):
            raise RuntimeError(f"pier build printed no digest: {result.stdout[-300:]}")
        return result, digest

    def pier(self, *args: str) -> str:
        return check([*PIER_ARGV, *args], self.env)


class BuildahSide:
    """buildah with its own --root and --runroot (overlay), cleaned up and unmounted at the end."""

    def __init__(self, home: Path, base_ref: str) -> None:
        self.home = home
        self.root, self.runroot = home / "root", home / "run"
        self.base_ref = base_ref
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        registries = home / "registries.conf"
        registries.write_text("unqualified-search-registries = []\n")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "CONTAINERS_REGISTRIES_CONF": str(registries),
        }

    def argv(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "overlay",
            *args,
        ]

    def pull_base(self) -> None:
        check(self.argv("pull", "-q", "--tls-verify=false", self.base_ref), self.env)

    def build(
        self, context: Path, tag: str, isolation: tuple[str, ...] = ("--isolation", "chroot")
    ) -> tuple[Run, str]:
        argv = self.argv(
            "bud", *isolation, "--layers", "--tls-verify=false",
            "--build-arg", f"BASE={self.base_ref}", "-t", tag, str(context),
        )  # fmt: skip
        result = run_timed(argv, self.env)
        image_id = result.stdout.strip().splitlines()[-1]
        return result, image_id

    def cleanup(self) -> None:
        subprocess.run(self.argv("rm", "--all"), capture_output=True, env=self.env, check=False)
        unmount_under(self.home)


class Podman:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.inner = layer_store.Podman(home)

    def argv(self, *args: str) -> list[str]:
        return self.inner.argv(*args)

    @property
    def env(self) -> dict[str, str]:
        return self.inner.env

    def cleanup(self) -> None:
        self.inner.cleanup()
        unmount_under(self.home)


def unmount_under(folder: Path) -> None:
    """Unmount, deepest first, whatever is mounted at or below ``folder``."""
    prefix = str(folder.resolve())
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# -- file trees ---------------------------------------------------------------------------


def tree_entries(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type, mode, owner, bytes' hash or link target, xattrs, hardlink group."""
    entries: dict[str, tuple] = {}
    first_path: dict[tuple[int, int], str] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            try:
                xattrs = tuple(
                    sorted(
                        (key, os.getxattr(path, key, follow_symlinks=False))
                        for key in os.listxattr(path, follow_symlinks=False)
                    )
                )
            except OSError:
                xattrs = ()
            if stat.S_ISLNK(st.st_mode):
                entries[relative] = ("symlink", os.readlink(path), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                entries[relative] = ("dir", oct(mode), st.st_uid, st.st_gid, xattrs)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                link = ""
                if st.st_nlink > 1:
                    link = first_path.setdefault((st.st_dev, st.st_ino), relative)
                entries[relative] = (
                    "file",
                    oct(mode),
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    digest,
                    xattrs,
                    link,
                )
            else:
                kind = (
                    "char" if stat.S_ISCHR(st.st_mode) else "block" if stat.S_ISBLK(st.st_mode) else "other"
                )
                entries[relative] = (kind, oct(mode), st.st_uid, st.st_gid, st.st_rdev)
    return entries


def compare_trees(mine: dict[str, tuple], theirs: dict[str, tuple]) -> tuple[list[dict], list[str]]:
    """(differing entries, buildah's mount-point entries set aside)."""
    ignored = []
    for name in BUILDAH_MOUNT_POINTS:
        entry = theirs.get(name)
        if name in mine or entry is None:
            continue
        empty_file = entry[0] == "file" and entry[4] == 0
        empty_dir = entry[0] == "dir" and not any(other.startswith(name + "/") for other in theirs)
        if empty_file or empty_dir:
            ignored.append(name)
            theirs = {k: v for k, v in theirs.items() if k != name}
    differing = []
    for name in sorted(set(mine) | set(theirs)):
        if mine.get(name) != theirs.get(name):
            differing.append({"path": name, "pier": mine.get(name), "buildah": theirs.get(name)})
    return differing, ignored


def profile_build(work: Path, context: Path, base_ref: str, top: int = 14) -> dict[str, Any]:
    """One cold pier build under cProfile: where the pier process's own time goes."""
    import pstats

    pier = PierSide(work / "profile" / "home", base_ref)
    pier.pull_base()
    output = work / "profile" / "build.prof"
    python = [str(REPO_ROOT / ".venv" / "bin" / "python"), *(["-P"] if PIER_SOURCE else [])]
    argv = [*python, "-m", "cProfile", "-o", str(output), "-m", "puller", "build", "-t", "bench/app:v1"]
    result = run_timed([*argv, "--build-arg", f"BASE={base_ref}", str(context)], pier.env)
    raw = vars(pstats.Stats(str(output)))["stats"]  # typeshed omits Stats.stats
    rows = [
        {
            "function": base._short(key).replace(f"{PIER_SOURCE}/", ""),
            "calls": calls,
            "own": own,
            "cum": cumulative,
        }
        for key, (_, calls, own, cumulative, _) in raw.items()
    ]
    total = max(row["cum"] for row in rows)
    by_own = sorted(rows, key=lambda r: r["own"], reverse=True)[:top]
    by_cum = sorted((r for r in rows if r["cum"] < 0.9 * total), key=lambda r: r["cum"], reverse=True)[:top]
    return {"wall": result.seconds, "cpu": result.cpu, "by_own": by_own, "by_cum": by_cum}


def compare_images(pier_inspect: dict, buildah_layout: Path) -> dict[str, Any]:
    """Layer counts and sizes, and the runtime config fields that differ between the two images."""

    def blob(digest: str) -> dict:
        return json.loads(base._blob_path(buildah_layout, digest).read_bytes())

    index = json.loads((buildah_layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    config = blob(manifest["config"]["digest"])
    ours, theirs = pier_inspect["Config"].get("config") or {}, config.get("config") or {}
    fields = sorted(set(ours) | set(theirs))
    return {
        "pier_layers": len(pier_inspect["Manifest"]["layers"]),
        "buildah_layers": len(manifest["layers"]),
        "pier_bytes": sum(layer["size"] for layer in pier_inspect["Manifest"]["layers"]),
        "buildah_bytes": sum(layer["size"] for layer in manifest["layers"]),
        "pier_history": len(pier_inspect["Config"].get("history") or []),
        "buildah_history": len(config.get("history") or []),
        "config_differences": {
            name: {"pier": ours.get(name), "buildah": theirs.get(name)}
            for name in fields
            if ours.get(name) != theirs.get(name)
        },
    }


def umoci_rootfs(layout: Path, tag: str, bundle: Path) -> Path:
    check(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)])
    return bundle / "rootfs"


# -- the run ------------------------------------------------------------------------------


def export_pier(revision: str, target: Path) -> None:
    """pier's packages as committed at ``revision``, run with the venv's python from there."""
    global PIER_SOURCE
    commit = check(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", revision]).strip()
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    PIER_ARGV[:] = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-P", "-m", "puller"]
    PIER_SOURCE = target
    log(f"measuring pier at git {commit} (exported to {target})")


def settle(seconds: float, when: str) -> None:
    """Wait for the inodes freed lately to age before a timed phase.

    On this machine's ext4 (no journal) the inode allocator skips, one by one, inodes freed in
    the last 60 s (``recently_deleted`` in fs/ext4/ialloc.c; see ``fresh()`` in
    bench/pull_unpack.py). Builds delete: buildah its working containers, pier its sandboxes,
    the previous run its whole folder. Nothing the script makes is deleted before the end.
    """
    if seconds > 0:
        log(f"settling {seconds:.0f} s {when}")
        os.sync()
        time.sleep(seconds)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measurement (default 5; medians)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary folder")
    parser.add_argument("--tmpdir", default=None, help="where the temporary folder goes (default /tmp)")
    parser.add_argument(
        "--settle", type=float, default=SETTLE_AFTER_BUILD,
        help=f"seconds to wait, after a sync, before each timed phase (default {SETTLE_AFTER_BUILD})",
    )  # fmt: skip
    parser.add_argument(
        "--buildah-oci", action=argparse.BooleanOptionalAction, default=True,
        help="also time cold builds with buildah --isolation oci --runtime runc (default: yes)",
    )  # fmt: skip
    parser.add_argument("--prepare", action="store_true", help="only build (or find) the cached base image")
    parser.add_argument("--profile", action="store_true", help="also one cold pier build under cProfile")
    parser.add_argument(
        "--pier-rev",
        default=None,
        help="measure pier as committed at this git revision (exported with git archive), not the work tree",
    )
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "umoci", "buildah", "runc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing: apt-get install docker-registry skopeo umoci buildah runc")
    if not PIER.exists():
        parser.error(f"{PIER} is missing: pip install -e . in the venv")

    layout, base_layer, _ = base_image()
    if args.prepare:
        return 0
    work = Path(tempfile.mkdtemp(prefix="pier-bench-build-", dir=args.tmpdir))
    if args.pier_rev:
        export_pier(args.pier_rev, work / "pier-src")
    registry: Server | None = None
    buildahs: list[BuildahSide] = []
    podmen: list[Podman] = []
    results: dict[str, Any] = {"rounds": args.rounds}
    started = time.monotonic()
    try:
        registry = start_distribution(work)
        host = f"127.0.0.1:{registry.port}"
        base_ref = f"{host}/bench/base:v1"
        skopeo = base.Skopeo(work / "skopeo-home")
        check(
            skopeo.argv("--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{base_ref}"), skopeo.env
        )
        context = work / "context"
        context.mkdir()
        counts = write_context(context)
        print(
            f"base: debootstrap --variant=minbase bookworm, 1 layer, {base_layer.size / MIB:.1f} MiB gzip,"
            f" {base_layer.tar_size / MIB:.1f} MiB tar, {base_layer.files:,} entries"
        )
        print(
            f"context: {counts['context_files']} files ({counts['src_files']} under src/),"
            f" Dockerfile of {DOCKERFILE.count(chr(10))} lines, 2 stages"
        )
        settle(args.settle, "before the cold builds")

        def new_buildah(name: str) -> BuildahSide:
            side = BuildahSide(work / name, base_ref)
            buildahs.append(side)
            return side

        # 1. cold builds
        cold: dict[str, list[Run]] = {"pier": [], "buildah": [], "buildah_oci": []}
        last_pier: PierSide | None = None
        last_buildah: BuildahSide | None = None
        pier_digest = ""
        for number in range(args.rounds):
            order: tuple[str, ...] = ("pier", "buildah") if number % 2 == 0 else ("buildah", "pier")
            if args.buildah_oci:
                order = (*order, "buildah_oci")
            for side in order:
                if side == "buildah_oci":
                    builder = new_buildah(f"cold{number}-buildah-oci")
                    builder.pull_base()
                    result, _ = builder.build(
                        context, "bench/app:v1", ("--isolation", "oci", "--runtime", "runc")
                    )
                elif side == "pier":
                    pier = PierSide(work / f"cold{number}-pier" / "home", base_ref)
                    pier.pull_base()
                    result, pier_digest = pier.build(context, "bench/app:v1")
                    last_pier = pier
                else:
                    builder = new_buildah(f"cold{number}-buildah")
                    builder.pull_base()
                    result, _ = builder.build(context, "bench/app:v1")
                    last_buildah = builder
                cold[side].append(result)
            log(
                f"cold round {number + 1}: "
                + ", ".join(f"{k} {v[-1].seconds:.2f} s" for k, v in cold.items() if v)
            )
        assert last_pier is not None and last_buildah is not None
        cold_steps = {
            "pier": len(pier_steps(cold["pier"][-1].stderr)),
            "buildah": len(buildah_steps(cold["buildah"][-1].stdout)),
        }

        (work / "logs").mkdir()
        (work / "logs" / "pier-cold.txt").write_text(cold["pier"][-1].stderr)
        (work / "logs" / "buildah-cold.txt").write_text(
            cold["buildah"][-1].stdout + cold["buildah"][-1].stderr
        )
        results["pier_step_times_cold"] = step_times(cold["pier"])

        # 2. no-change rebuilds, in the last cold round's state
        settle(args.settle, "before the no-change rebuilds")
        again: dict[str, list[Run]] = {"pier": [], "buildah": []}
        for number in range(args.rounds):
            order = ("pier", "buildah") if number % 2 == 0 else ("buildah", "pier")
            for side in order:
                if side == "pier":
                    result, digest = last_pier.build(context, "bench/app:v1")
                    if digest != pier_digest:
                        raise RuntimeError(f"no-change rebuild changed the digest: {digest} != {pier_digest}")
                    if ran(pier_steps(result.stderr)):
                        raise RuntimeError(f"pier ran steps on a no-change rebuild:\n{result.stderr}")
                else:
                    result, _ = last_buildah.build(context, "bench/app:v1")
                    if ran(buildah_steps(result.stdout)):
                        log(f"buildah ran steps on a no-change rebuild: {ran(buildah_steps(result.stdout))}")
                again[side].append(result)
            log(
                f"no-change rebuild {number + 1}: pier {again['pier'][-1].seconds:.3f} s,"
                f" buildah {again['buildah'][-1].seconds:.3f} s"
            )

        # 3. one source file changed, new content each round
        settle(args.settle, "before the changed-file rebuilds")
        changed: dict[str, list[Run]] = {"pier": [], "buildah": []}
        steps_ran: dict[str, list[str]] = {}
        original = (context / CHANGED_FILE).read_bytes()
        for number in range(args.rounds):
            (context / CHANGED_FILE).write_text(changed_source(number))
            order = ("pier", "buildah") if number % 2 == 0 else ("buildah", "pier")
            for side in order:
                if side == "pier":
                    result, _ = last_pier.build(context, "bench/app:v1")
                    steps_ran["pier"] = ran(pier_steps(result.stderr))
                else:
                    result, _ = last_buildah.build(context, "bench/app:v1")
                    steps_ran["buildah"] = ran(buildah_steps(result.stdout))
                changed[side].append(result)
            log(
                f"changed-file rebuild {number + 1}: pier {changed['pier'][-1].seconds:.2f} s"
                f" ({len(steps_ran['pier'])} steps ran), buildah {changed['buildah'][-1].seconds:.2f} s"
                f" ({len(steps_ran['buildah'])} steps ran)"
            )
        (context / CHANGED_FILE).write_bytes(original)
        # back to the original file: both caches hold it, so nothing runs
        reverted_pier, reverted_digest = last_pier.build(context, "bench/app:v1")
        reverted_buildah, _ = last_buildah.build(context, "bench/app:v1")
        reverted = {
            "pier_seconds": reverted_pier.seconds,
            "pier_ran": ran(pier_steps(reverted_pier.stderr)),
            "pier_same_digest": reverted_digest == pier_digest,
            "buildah_seconds": reverted_buildah.seconds,
            "buildah_ran": ran(buildah_steps(reverted_buildah.stdout)),
        }

        def row(runs: dict[str, list[Run]]) -> dict[str, Any]:
            pier_s = median([r.seconds for r in runs["pier"]])
            buildah_s = median([r.seconds for r in runs["buildah"]])
            return {
                "pier": pier_s,
                "buildah": buildah_s,
                "ratio": pier_s / buildah_s,
                "pier_cpu": median([r.cpu for r in runs["pier"]]),
                "buildah_cpu": median([r.cpu for r in runs["buildah"]]),
                "pier_runs": [r.seconds for r in runs["pier"]],
                "buildah_runs": [r.seconds for r in runs["buildah"]],
                **(
                    {
                        "buildah_oci": median([r.seconds for r in runs["buildah_oci"]]),
                        "buildah_oci_runs": [r.seconds for r in runs["buildah_oci"]],
                    }
                    if runs.get("buildah_oci")
                    else {}
                ),
            }

        figures = {"cold": row(cold), "no_change": row(again), "changed": row(changed)}
        results.update(figures)
        results["steps_ran_after_change"] = steps_ran
        results["steps_in_cold_build"] = cold_steps
        results["reverted"] = reverted

        # 4. reproducibility
        digests = []
        repro_seconds = []
        for number in range(2):
            place = work / f"repro{number}"
            place.mkdir()
            copy = place / "context" if number == 0 else place / "elsewhere" / "ctx"
            shutil.copytree(context, copy, symlinks=True, copy_function=shutil.copy)  # new mtimes
            pier = PierSide(place / "home", base_ref)
            pier.pull_base()
            if number:
                time.sleep(2)  # a different second, at least
            result, digest = pier.build(copy, "bench/app:repro", {"SOURCE_DATE_EPOCH": EPOCH})
            digests.append(digest)
            repro_seconds.append(result.seconds)
        results["reproducible"] = {
            "same": digests[0] == digests[1],
            "digests": digests,
            "seconds": repro_seconds,
            "epoch": EPOCH,
        }

        # 5. file trees and interoperability
        interop: dict[str, Any] = {}
        trees = work / "trees"
        trees.mkdir()
        last_pier.pier("unpack", "bench/app:v1", str(trees / "pier"))
        mine = tree_entries(trees / "pier")
        check(
            last_buildah.argv("push", "bench/app:v1", f"oci:{trees / 'buildah-layout'}:app"), last_buildah.env
        )
        theirs = tree_entries(umoci_rootfs(trees / "buildah-layout", "app", trees / "buildah-bundle"))
        differing, ignored = compare_trees(mine, theirs)
        interop["tree"] = {
            "pier_entries": len(mine),
            "buildah_entries": len(theirs),
            "ignored_buildah_mount_points": ignored,
            "differing": len(differing),
            "ignored_files_copied": [name for name in mine if name.endswith(".tmp") or "/notes/" in name],
            "differences": [{k: str(v) for k, v in d.items()} for d in differing[:50]],
        }
        interop["images"] = compare_images(
            json.loads(last_pier.pier("inspect", "bench/app:v1")), trees / "buildah-layout"
        )
        # pier's image in the registry, then read by others
        pushed_ref = f"{host}/bench/app:pier"
        last_pier.pier("tag", "bench/app:v1", pushed_ref)
        last_pier.pier("push", "-q", pushed_ref)
        ok, text = attempt(
            skopeo.argv(
                "--src-tls-verify=false", f"docker://{pushed_ref}", f"oci:{trees / 'skopeo-layout'}:app"
            ),
            skopeo.env,
        )
        interop["skopeo_copy"] = {"ok": ok, "output": text if not ok else ""}
        if ok:
            umoci_tree = tree_entries(umoci_rootfs(trees / "skopeo-layout", "app", trees / "skopeo-bundle"))
            cross, _ = compare_trees(mine, umoci_tree)
            interop["umoci_vs_pier_unpack"] = {
                "differing": len(cross),
                "differences": [{k: str(v) for k, v in d.items()} for d in cross[:20]],
            }
        if shutil.which("podman"):
            podman = Podman(work / "podman")
            podmen.append(podman)
            ok, text = attempt(podman.argv("pull", "-q", "--tls-verify=false", pushed_ref), podman.env)
            interop["podman_pull"] = {"ok": ok, "output": text if not ok else ""}
            if ok:
                ok, text = attempt(
                    podman.argv("run", "--rm", *layer_store.run_options(), pushed_ref), podman.env
                )
                interop["podman_run"] = {"ok": ok, "output": text}
            podman.cleanup()
        else:
            interop["podman_pull"] = {"ok": False, "output": "podman is not installed"}
        runner = PierSide(work / "run-pier" / "home", base_ref)
        ok, text = attempt([*PIER_ARGV, "pull", "-q", pushed_ref], runner.env)
        if ok:
            ok, text = attempt([*PIER_ARGV, "run", "--rm", pushed_ref], runner.env)
        interop["pier_run"] = {"ok": ok, "output": text}
        results["interop"] = interop
        if args.profile:
            results["profile"] = profile_build(work, context, base_ref)
        results["elapsed"] = time.monotonic() - started

        report(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    finally:
        for podman in podmen:
            with contextlib.suppress(Exception):
                podman.cleanup()
        for made in buildahs:
            with contextlib.suppress(Exception):
                made.cleanup()
        unmount_under(work)
        if registry is not None:
            with contextlib.suppress(Exception):
                registry.stop()
        if args.keep_work:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict[str, Any]) -> None:
    rounds = results["rounds"]
    print(f"\nmedians of {rounds} rounds, seconds (wall, process start-up included)")
    print(f"  {'':34} {'pier':>8} {'buildah':>8} {'ratio':>7}   target")
    targets = {
        "cold": ("cold build", lambda r: r["ratio"] <= 1.0, "<= 1.0x"),
        "no_change": (
            "no-change rebuild",
            lambda r: r["pier"] <= 0.5 and r["ratio"] <= 0.2,
            "<= 0.5 s and <= 0.2x",
        ),
        "changed": ("rebuild after one source change", None, ""),
    }
    for key, (label, met, text) in targets.items():
        r = results[key]
        status = "" if met is None else ("met" if met(r) else "NOT met")
        print(f"  {label:34} {r['pier']:8.3f} {r['buildah']:8.3f} {r['ratio']:6.2f}x   {text} {status}")
    cold = results["cold"]
    if "buildah_oci" in cold:
        ratio = cold["pier"] / cold["buildah_oci"]
        label = "cold, buildah --isolation oci (runc)"
        print(f"  {label:34} {cold['pier']:8.3f} {cold['buildah_oci']:8.3f} {ratio:6.2f}x")
    print("each round (seconds) and CPU medians (user+sys of the command and its children):")
    for key, (label, _, _) in targets.items():
        r = results[key]
        print(
            f"  {label}: pier {', '.join(f'{s:.2f}' for s in r['pier_runs'])};"
            f" buildah {', '.join(f'{s:.2f}' for s in r['buildah_runs'])}"
            f" (CPU {r['pier_cpu']:.2f} / {r['buildah_cpu']:.2f} s)"
        )
    if "buildah_oci_runs" in cold:
        print(f"  cold, buildah --isolation oci: {', '.join(f'{s:.2f}' for s in cold['buildah_oci_runs'])}")
    times = results["pier_step_times_cold"]
    print(
        f"pier's cold build by step (median DONE times; steps sum {times['sum']:.2f} s of"
        f" {times['wall']:.2f} s wall):"
    )
    for step, seconds in times["steps"].items():
        print(f"  {seconds:5.2f}  {step}")
    print("\nsteps that ran after changing", CHANGED_FILE)
    for side, steps in results["steps_ran_after_change"].items():
        print(f"  {side} ({len(steps)}):")
        for step in steps:
            print(f"    {step[:110]}")
    rev = results["reverted"]
    print(
        f"back to the original file: pier {rev['pier_seconds']:.2f} s, ran {len(rev['pier_ran'])} steps,"
        f" same digest as the cold build: {'yes' if rev['pier_same_digest'] else 'no'};"
        f" buildah {rev['buildah_seconds']:.2f} s, ran {len(rev['buildah_ran'])} steps"
    )
    repro = results["reproducible"]
    print(
        f"\nreproducible (SOURCE_DATE_EPOCH={repro['epoch']}, two contexts, two homes):"
        f" {'yes' if repro['same'] else 'NO'}"
    )
    for digest, seconds in zip(repro["digests"], repro["seconds"], strict=True):
        print(f"  {digest}  ({seconds:.2f} s)")
    interop = results["interop"]
    tree = interop["tree"]
    print(
        f"\nfile trees: pier unpack {tree['pier_entries']:,} entries, buildah (umoci unpack)"
        f" {tree['buildah_entries']:,}; set aside: {', '.join(tree['ignored_buildah_mount_points']) or '-'};"
        f" differing entries: {tree['differing']}"
    )
    if tree["ignored_files_copied"]:
        print(f"  .dockerignore'd files in pier's image: {', '.join(tree['ignored_files_copied'][:5])}")
    for difference in tree["differences"]:
        print(f"  {difference['path']}: pier {difference['pier']} / buildah {difference['buildah']}")
    images = interop["images"]
    print(
        f"  images: pier {images['pier_layers']} layers, {images['pier_bytes'] / MIB:.2f} MiB"
        f" ({images['pier_history']} history entries); buildah {images['buildah_layers']} layers,"
        f" {images['buildah_bytes'] / MIB:.2f} MiB ({images['buildah_history']} history entries);"
        f" config fields differing: {len(images['config_differences'])}"
    )
    for name, values in images["config_differences"].items():
        print(f"    {name}: pier {values['pier']!r} / buildah {values['buildah']!r}")
    for key in ("skopeo_copy", "podman_pull", "podman_run", "pier_run"):
        if key in interop:
            entry = interop[key]
            output = entry["output"].replace("\n", " | ")[-200:]
            shown = f"  {output}" if output else ""
            print(f"  {key.replace('_', ' ')}: {'ok' if entry['ok'] else 'FAILED'}{shown}")
    if "umoci_vs_pier_unpack" in interop:
        cross = interop["umoci_vs_pier_unpack"]["differing"]
        print(f"  umoci unpack of pier's image vs pier unpack: {cross} differing entries")
    if "profile" in results:
        profile = results["profile"]
        print(f"\npier build (cold) under cProfile: {profile['wall']:.2f} s wall, {profile['cpu']:.2f} s CPU")
        for title, key in (("own time", "by_own"), ("cumulative time, below the entry points", "by_cum")):
            print(f"  top by {title} (own s, cumulative s, calls):")
            for row in profile[key]:
                print(f"    {row['own']:6.2f} {row['cum']:6.2f} {row['calls']:8d}  {row['function']}")
    print(f"\nwhole run: {results['elapsed']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
