#!/usr/bin/env python3
"""The web UI at scale (issue 23): its pages on a store of 10,000 repositories and a 5,000-tag one.

The store is written once, in-process, straight through pier's own ``RegistryStore`` on a
``FilesystemDriver`` (the real layout and real manifests, fsync off), and kept under
bench/.cache/ui/ for later runs:

- ``--repos`` repositories ``team-NN/app-NNNN`` in ``--namespaces`` namespaces, each holding
  one small image (a config, one layer of 0.5-8 KiB, an OCI manifest) tagged ``latest``,
  every other one also ``v1.N``;
- one repository, ``platform/builds``, with ``--tags`` tags ``build-NNNNN``, each on a
  manifest of its own (its own config and a layer of 1-64 KiB), so sizes differ;
- push dates spread over a year (the links' mtimes, which is where pier reads them), in an
  order that is neither the names' nor the sizes'.

Then ``pier serve --root STORE`` (``--index-refresh 1h``, so no rebuild falls inside the
measurement) is started on a free loopback port, and the script measures:

1. once the server is idle (its start-up walk of the store, see ``settle``, is over): the
   first page view, which builds the catalog index (two walks of the store), its server
   CPU time, and the server's VmRSS before and after;
2. the first view of every other page (repositories page 100, a search, the 5,000-tag
   repository sorted by date, by name and by size, a small repository, an image, usage):
   cold, as manifest summaries are computed on first use;
3. every page ``--requests`` times (30), the pages taking turns, over one keep-alive
   connection: the server's own time (``Server-Timing: app;dur=``) and the client's (request
   sent to body read), median and p95;
4. for reference, the API's listings on pier and on Debian's ``docker-registry``
   (distribution 2.8) serving the same store (read-only, through a symlink: pier's layout
   is distribution's for ``repositories/`` and ``blobs/``): ``/v2/_catalog?n=50`` (first
   page and the 100th, by ``last=``) and ``/v2/platform/builds/tags/list``;
5. a page viewed over and over while the index rebuilds in the background (a second pier
   with ``--index-refresh 5s``): how long a rebuild stalls page views.

    .venv/bin/python bench/ui.py                    # 10,000 repositories / 5,000 tags, ~4 min the first time
    .venv/bin/python bench/ui.py --repos 1000 --tags 500 --requests 10   # smoke run
    .venv/bin/python bench/ui.py --profile    # instead: cProfile the build and each first view in-process

See bench/README.md, section "Web UI (issue 23)".
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import http.client
import io
import json
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from servers import REPO_ROOT, Server, descendants, family_cpu_seconds, free_port  # bench/servers.py

from registry import layout
from registry.references import Digest
from registry.store import RegistryStore
from storage_backends.filesystem import FilesystemDriver

CACHE = REPO_ROOT / "bench" / ".cache" / "ui"
STORE_VERSION = 1  # bump when the generated content changes: a new cache folder
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
BIG = "platform/builds"
YEAR = 365 * 86400
BUDGET_MS = 300.0  # the limit on server time per page


# -- the store ---------------------------------------------------------------------------


def repo_name(number: int, namespaces: int) -> str:
    return f"team-{number % namespaces:02d}/app-{number:04d}"


def image(rng: random.Random, layer_size: int, created: float, label: str) -> tuple[bytes, bytes, bytes]:
    """(layer, config, manifest) of a small single-layer image."""
    layer = rng.randbytes(layer_size)
    arch = rng.choice(["amd64", "amd64", "arm64"])
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"APP={label}"],
                "Cmd": ["/app/run"],
                "WorkingDir": "/app",
                "Labels": {"org.opencontainers.image.title": label},
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"COPY app /app # {label}"}],
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": _digest(layer), "size": len(layer)}],
        }
    ).encode()
    return layer, config, manifest


def _digest(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


@dataclass
class Push:
    name: str
    tags: list[str]
    created: float  # the push date the links get
    layer_size: int
    seed: int


def plan(repos: int, namespaces: int, tags: int, now: float) -> list[Push]:
    rng = random.Random(23)
    pushes = []
    for number in range(repos):
        names = ["latest"] if number % 2 else ["latest", f"v1.{number % 50}"]
        pushes.append(
            Push(
                repo_name(number, namespaces),
                names,
                now - rng.uniform(0, YEAR),
                rng.randint(512, 8192),
                number,
            )
        )
    dates = [now - rng.uniform(0, YEAR) for _ in range(tags)]
    for number in range(tags):
        pushes.append(
            Push(BIG, [f"build-{number:05d}"], dates[number], rng.randint(1024, 65536), repos + number)
        )
    return pushes


async def write_push(store: RegistryStore, root: Path, push: Push) -> int:
    """One image through the store, as a push would leave it; then its links dated. Files written."""
    rng = random.Random(push.seed)
    layer, config, manifest = image(rng, push.layer_size, push.created, push.name)
    for blob in (layer, config):
        digest = Digest.parse(_digest(blob))
        await store.driver.put_content(layout.blob_data(digest), blob)
        await store.link_blob(push.name, digest)
    digest, _ = await store.put_manifest(push.name, push.tags[0], manifest, OCI_MANIFEST, push.tags[1:])
    links = [layout.revision_link(push.name, digest), *(layout.tag_link(push.name, t) for t in push.tags)]
    for path in links:
        os.utime(root / path, (push.created, push.created))
    return 6 + len(push.tags)  # layer, config, their links, the manifest, its revision link, the tags


async def write_store(root: Path, pushes: list[Push], concurrency: int = 32) -> int:
    store = RegistryStore(FilesystemDriver(root, fsync=False))
    gate = asyncio.Semaphore(concurrency)

    async def one(push: Push) -> int:
        async with gate:
            return await write_push(store, root, push)

    return sum(await asyncio.gather(*(one(p) for p in pushes)))


def store_for(args: argparse.Namespace) -> Path:
    """The populated store, from the cache when it is there."""
    folder = CACHE / f"store-v{STORE_VERSION}-{args.repos}-{args.namespaces}-{args.tags}"
    root = folder / "data"
    if (folder / ".complete").exists() and not args.rebuild:
        print(f"store: {root} (cached)", flush=True)
        return root
    shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True)
    pushes = plan(args.repos, args.namespaces, args.tags, time.time())
    started = time.perf_counter()
    files = asyncio.run(write_store(root, pushes))
    seconds = time.perf_counter() - started
    facts = {"repositories": args.repos + 1, "images": len(pushes), "files": files, "seconds": seconds}
    (folder / "store.json").write_text(json.dumps(facts, indent=2))
    (folder / ".complete").touch()
    print(
        f"store: {root} written in {seconds:.1f} s ({len(pushes)} images, {files} files, "
        f"{len(pushes) / seconds:.0f} images/s)",
        flush=True,
    )
    return root


# -- servers -----------------------------------------------------------------------------


def start_pier(label: str, work: Path, root: Path, refresh: str) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
    command = [sys.executable, "-m", "registry", "serve", "--addr", f"127.0.0.1:{port}", "--root", str(root)]
    command += ["--access-log", "false", "--log-level", "warning", "--index-refresh", refresh]
    return Server(label, command, port, work / f"{label}.log", env).start()


def start_distribution(work: Path, root: Path) -> Server | None:
    """docker-registry reading the same store, read-only: it keeps its layout under
    ``<rootdirectory>/docker/registry/v2``, so that folder is a symlink to pier's root."""
    binary = shutil.which("docker-registry")
    if binary is None:
        return None
    top = work / "distribution-root"
    (top / "docker" / "registry").mkdir(parents=True)
    (top / "docker" / "registry" / "v2").symlink_to(root)
    port = free_port()
    config = work / "distribution.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        "storage:\n  cache:\n    blobdescriptor: inmemory\n"
        f"  filesystem:\n    rootdirectory: {top}\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n    readonly:\n      enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    return Server("distribution", [binary, "serve", str(config)], port, work / "distribution.log").start()


def rss_mib(pid: int) -> float:
    """VmRSS of the server and its children (uvicorn's workers, if any)."""
    total = 0
    for process in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def settle(server: Server, timeout: float = 60.0) -> float:
    """Wait until the server is idle (under 20 ms of CPU in 0.5 s); the CPU seconds it used
    meanwhile. At start-up pier's upload purger walks the whole store for writers' leftovers
    (``purge_incomplete``), which would otherwise be counted in the index build."""
    started, deadline = family_cpu_seconds(server.pid), time.monotonic() + timeout
    last = started
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = family_cpu_seconds(server.pid)
        if now - last < 0.02:
            break
        last = now
    return last - started


# -- the client --------------------------------------------------------------------------


class Client:
    """One keep-alive connection; sends back the session cookie the UI sets, as a browser would."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.cookie = ""

    def get(self, path: str) -> tuple[float, float | None, bytes]:
        """(client ms, server ms from Server-Timing or None, body)."""
        headers = {"Cookie": self.cookie} if self.cookie else {}
        started = time.perf_counter()
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        cookie = response.getheader("set-cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        found = re.search(r"app;dur=([\d.]+)", response.getheader("server-timing") or "")
        return elapsed, float(found.group(1)) if found else None, body

    def close(self) -> None:
        self.connection.close()


@dataclass
class Samples:
    client: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)

    def add(self, client: float, server: float | None) -> None:
        self.client.append(client)
        if server is not None:
            self.server.append(server)


def p95(values: list[float]) -> float:
    """Nearest rank: of 30 values, the 29th smallest."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def all_names(args: argparse.Namespace) -> list[str]:
    return sorted([BIG, *(repo_name(n, args.namespaces) for n in range(args.repos))])


def far_page(args: argparse.Namespace) -> int:
    """Page 100 of 50 repositories, or the last page of a smaller store."""
    return min(100, -(-(args.repos + 1) // 50))


def ui_pages(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(label, path, text the body must hold): the pages measured, and what proves each is right."""
    small = repo_name(7, args.namespaces)
    hundredth = all_names(args)[(far_page(args) - 1) * 50]
    matching = min(100, args.repos)
    tags = f"{args.tags:,}"
    deep = min(60, -(-args.tags // 50))
    return [
        ("Repositories, page 1", "/ui/", f"{args.repos + 1} repositories"),
        (f"Repositories, page {far_page(args)}", f"/ui/?page={far_page(args)}", hundredth),
        ("Search `?q=app-00`", "/ui/?q=app-00", f"{matching} repositories matching"),
        (f"{tags}-tag repository, by date", f"/ui/r/{BIG}", 'data-tag="build-'),
        (f"{tags}-tag repository, by name", f"/ui/r/{BIG}?sort=name&order=asc", 'data-tag="build-00000"'),
        (f"{tags}-tag repository, by size", f"/ui/r/{BIG}?sort=size&order=desc", 'data-tag="build-'),
        (
            f"{tags}-tag repository, by date, page {deep}",
            f"/ui/r/{BIG}?sort=date&order=desc&page={deep}",
            "build-",
        ),
        ("Small repository (2 tags)", f"/ui/r/{small}", 'data-tag="latest"'),
        ("Image page", f"/ui/r/{small}/-/m/latest", "COPY app /app"),
        ("Usage", "/ui/usage", "team-00"),
    ]


def check(label: str, body: bytes, expected: str) -> None:
    if expected.encode() not in body:
        raise RuntimeError(f"{label}: the page does not hold {expected!r}")


def measure_pier(args: argparse.Namespace, work: Path, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    server = start_pier("pier", work, root, "1h")
    try:
        results["startup_cpu_s"] = settle(server)
        results["rss_start_mib"] = rss_mib(server.pid)
        print(f"start-up: {results['startup_cpu_s']:.2f} s of server CPU after it answered", flush=True)
        client = Client(server.port)
        pages = ui_pages(args)
        label, path, expected = pages[0]
        cpu = family_cpu_seconds(server.pid)
        client_ms, server_ms, body = client.get(path)
        cpu = family_cpu_seconds(server.pid) - cpu
        check(label, body, expected)
        results["first_page"] = {"client_ms": client_ms, "server_ms": server_ms, "cpu_s": cpu}
        results["rss_index_mib"] = rss_mib(server.pid)
        print(
            f"first page (index build): server {server_ms:.0f} ms, client {client_ms:.0f} ms, server CPU "
            f"{cpu:.2f} s; RSS {results['rss_start_mib']:.1f} -> {results['rss_index_mib']:.1f} MiB",
            flush=True,
        )
        first: dict[str, dict[str, float | None]] = {}
        for label, path, expected in pages[1:]:  # each page's first view: caches cold
            client_ms, server_ms, body = client.get(path)
            check(label, body, expected)
            first[label] = {"client_ms": client_ms, "server_ms": server_ms}
            print(f"first: {label}: server {server_ms:.1f} ms, client {client_ms:.1f} ms", flush=True)
        results["first"] = first
        samples = {label: Samples() for label, _, _ in pages}
        for _ in range(args.requests):
            for label, path, _ in pages:
                client_ms, server_ms, _ = client.get(path)
                samples[label].add(client_ms, server_ms)
        results["pages"] = {label: vars(s) for label, s in samples.items()}
        results["rss_end_mib"] = rss_mib(server.pid)
        client.close()
        results["api"] = measure_api(args, server, "pier")
    finally:
        server.stop()
    return results


def api_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    page = far_page(args)
    last = quote(all_names(args)[(page - 1) * 50 - 1], safe="")
    return [
        ("`/v2/_catalog?n=50`", "/v2/_catalog?n=50"),
        (f"`/v2/_catalog?n=50&last=…` (page {page})", f"/v2/_catalog?n=50&last={last}"),
        (f"`/v2/{BIG}/tags/list` ({args.tags:,} tags)", f"/v2/{BIG}/tags/list"),
    ]


def measure_api(args: argparse.Namespace, server: Server, who: str) -> dict[str, list[float]]:
    client = Client(server.port)
    paths = api_paths(args)
    counts = [50, len(all_names(args)[(far_page(args) - 1) * 50 :][:50]), args.tags]
    for (label, path), expected in zip(paths, counts, strict=True):  # once, untimed: answers checked
        _, _, body = client.get(path)
        answer = json.loads(body)
        count = len(answer.get("repositories", answer.get("tags", [])))
        if count != expected:
            raise RuntimeError(f"{who} {label}: {count} entries, expected {expected}")
    samples: dict[str, list[float]] = {label: [] for label, _ in paths}
    for _ in range(args.requests):
        for label, path in paths:
            samples[label].append(client.get(path)[0])
    client.close()
    for label, values in samples.items():
        print(f"{who} {label}: median {med(values):.1f} ms, p95 {p95(values):.1f} ms", flush=True)
    return samples


def measure_stall(args: argparse.Namespace, work: Path, root: Path) -> dict[str, Any]:
    """Page 1 over and over while the index rebuilds every few seconds in the background."""
    server = start_pier("pier-rebuilding", work, root, f"{args.stall_refresh}s")
    try:
        settle(server)
        client = Client(server.port)
        client.get("/ui/")  # the first build
        samples = Samples()
        started = time.monotonic()
        while time.monotonic() - started < args.stall_seconds:
            client_ms, server_ms, _ = client.get("/ui/")
            samples.add(client_ms, server_ms)
        client.close()
    finally:
        server.stop()
    over = sum(1 for c in samples.client if c > BUDGET_MS)
    print(
        f"during rebuilds every {args.stall_refresh} s: {len(samples.client)} views, client median "
        f"{med(samples.client):.1f} ms, p95 {p95(samples.client):.1f}, max {max(samples.client):.0f} ms, "
        f"{over} over {BUDGET_MS:.0f} ms; server max {max(samples.server):.1f} ms",
        flush=True,
    )
    return {"refresh_s": args.stall_refresh, "seconds": args.stall_seconds, **vars(samples)}


# -- profiling, in-process -----------------------------------------------------------------


def profile(root: Path, args: argparse.Namespace, top: int) -> None:
    """cProfile of the index build, a warm rebuild and each page's first (cold) view, in this process."""
    from registry.config import load_settings
    from registry.server import create_app

    app = create_app(
        load_settings({"root": str(root), "access_log": False, "index_refresh": 3600}, environ={})
    )

    async def call(path: str) -> tuple[int, float]:
        raw, _, query = path.partition("?")
        scope = {
            "type": "http", "http_version": "1.1", "method": "GET", "path": raw, "raw_path": raw.encode(),
            "query_string": query.encode(), "scheme": "http", "server": ("127.0.0.1", 5000),
            "client": ("127.0.0.1", 40000), "root_path": "", "headers": [(b"host", b"127.0.0.1:5000")],
        }  # fmt: skip
        status = [0]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]

        started = time.perf_counter()
        await app(scope, receive, send)
        return status[0], (time.perf_counter() - started) * 1000

    async def profiled(label: str, work: Any) -> None:
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        await work()
        profiler.disable()
        print(f"\n== {label}: {(time.perf_counter() - started) * 1000:.0f} ms (under cProfile)")
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
        print("\n".join(out.getvalue().splitlines()[6:]))

    async def main() -> None:
        index = app.services.governance.index
        await profiled("index build (first page view)", lambda: call("/ui/"))
        await profiled("index rebuild, warm", index.rebuild)
        for label, path, _ in ui_pages(args)[1:]:
            await profiled(f"first view: {label}", lambda p=path: call(p))

    asyncio.run(main())


# -- the report ----------------------------------------------------------------------------


def table(args: argparse.Namespace, pier: dict[str, Any], dist: dict[str, list[float]] | None) -> str:
    lines = [
        "| Page | first view, server | server median | server p95 | client median | client p95 | ≤ 300 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    first = pier["first_page"]
    lines.append(
        f"| **First page view: builds the index** | {first['server_ms']:,.0f} ms | | | "
        f"{first['client_ms']:,.0f} ms (client; server CPU {first['cpu_s']:.1f} s) | | once per process |"
    )
    for label, values in pier["pages"].items():
        cold = pier["first"].get(label, {}).get("server_ms")
        cold_text = f"{cold:.1f}" if cold is not None else "(after the build)"
        worst = max(values["server"] + ([cold] if cold is not None else []))
        lines.append(
            f"| {label} | {cold_text} | {med(values['server']):.1f} | {p95(values['server']):.1f} | "
            f"{med(values['client']):.1f} | {p95(values['client']):.1f} | "
            f"{'yes' if worst <= BUDGET_MS else '**no**'} |"
        )
    lines += [
        "",
        "| API listing (client ms) | pier median | pier p95 | distribution median | distribution p95 "
        "| pier ÷ distribution |",
    ]
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, values in pier["api"].items():
        other = dist.get(label) if dist else None
        slower = med(values) / med(other) if other else 0.0
        ratio = "" if not other else f"{slower:.2f}x" if slower < 10 else f"{slower:,.0f}x"
        lines.append(
            f"| {label} | {med(values):.1f} | {p95(values):.1f} | "
            f"{f'{med(other):.1f}' if other else '—'} | {f'{p95(other):.1f}' if other else '—'} | {ratio} |"
        )
    lines.append("")
    lines.append(
        f"RSS: {pier['rss_start_mib']:.1f} MiB at start, {pier['rss_index_mib']:.1f} MiB with the index "
        f"built, {pier['rss_end_mib']:.1f} MiB after every page (all {args.tags:,} summaries computed)."
    )
    return "\n".join(lines)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.machine(),
    )  # fmt: skip
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    python = platform.python_version()
    return f"{os.cpu_count()} cores ({cpu}), Python {python}, pier at git {git.stdout.strip()}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--tags", type=int, default=5_000, help=f"tags of {BIG}")
    parser.add_argument("--requests", type=int, default=30, help="views of each page")
    parser.add_argument("--rebuild", action="store_true", help="write the store again, not from the cache")
    parser.add_argument("--stall-refresh", type=int, default=5, help="--index-refresh of the rebuild run, s")
    parser.add_argument("--stall-seconds", type=float, default=20.0, help="0: skip the rebuild run")
    parser.add_argument("--no-distribution", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the build and first views in-process"
    )
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    args = parser.parse_args()
    print(machine(), flush=True)
    root = store_for(args)
    print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    if args.profile:
        profile(root, args, args.profile_top)
        return 0
    work = Path(tempfile.mkdtemp(prefix="pier-ui-bench-"))
    results: dict[str, Any] = {"machine": machine(), "repos": args.repos, "tags": args.tags}
    try:
        results["pier"] = pier = measure_pier(args, work, root)
        dist: dict[str, list[float]] | None = None
        if not args.no_distribution:
            server = start_distribution(work, root)
            if server is None:
                print("docker-registry is not installed: no reference", flush=True)
            else:
                try:
                    dist = results["distribution"] = measure_api(args, server, "distribution")
                finally:
                    server.stop()
        if args.stall_seconds > 0:
            results["stall"] = measure_stall(args, work, root)
    finally:
        if args.keep:
            print(f"logs: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print("load average: {:.2f} {:.2f} {:.2f}".format(*results["loadavg_end"]), flush=True)
    print()
    print(table(args, pier, dist))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
