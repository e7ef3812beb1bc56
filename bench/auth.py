#!/usr/bin/env python3
"""What access control costs: pier open, with Basic auth (htpasswd), and with bearer tokens.

One data folder, three servers on loopback (only the one being measured is busy), the
same content in every mode: a 1 GiB blob and a small image. Measured with the caller's
credentials on every request:

- a pull of the 1 GiB blob with ``curl`` (Basic: the password; token: a bearer token
  fetched from pier's ``/auth/token``);
- manifest ``HEAD``s per second at 16 connections (bench/api.py's load generator:
  Debian's wrk cannot HEAD) and manifest ``GET``s per second with ``wrk -t1``.

The three servers run side by side and the measurements rotate among them in short
bursts, so the machine's drift hits every mode alike. Prints medians over the bursts
and each mode's overhead against the open registry.

    .venv/bin/python bench/auth.py [--rounds 20] [--seconds 3] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import bcrypt
from api import (
    MIB,
    BlobFile,
    pull_curl,
    push_single_post,
    push_small_image,
    run_builtin,
    run_wrk,
    start_pier,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from servers import REPO_ROOT  # bench/servers.py

USER, PASSWORD = "bench", "bench-password"

# Run with the repository as the working directory, so ``registry`` is pier's package. It
# calls the ASGI app directly: no sockets, no HTTP parsing, no other process, so what
# differs between the modes is the auth code.
IN_PROCESS = """
import asyncio, json, sys, time
from registry.config import load_settings
from registry.server import create_app

ACCEPT = b"application/vnd.oci.image.manifest.v1+json"
modes, root, count, repeats = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def main():
    apps = {m: create_app(load_settings({"root": root, "access_log": False, **flags}, environ={}))
            for m, (flags, _) in modes.items()}
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    statuses = []
    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
    best = {m: float("inf") for m in modes}
    for _ in range(repeats):
        for mode, (_, headers) in modes.items():
            scope = {"type": "http", "method": "HEAD", "path": "/v2/bench/app/manifests/v1",
                     "raw_path": b"/v2/bench/app/manifests/v1", "query_string": b"", "scheme": "http",
                     "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 40000), "root_path": "",
                     "headers": [(b"host", b"127.0.0.1:5000"), (b"accept", ACCEPT)]
                                + [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
            app = apps[mode]
            started = time.perf_counter()
            for _ in range(count):
                await app(dict(scope), receive, send)
            best[mode] = min(best[mode], (time.perf_counter() - started) / count * 1e6)
            if set(statuses) != {200}:
                raise SystemExit(f"{mode}: statuses {set(statuses)}")
            statuses.clear()
    print(json.dumps(best))

asyncio.run(main())
"""


def write_credentials(work: Path) -> tuple[Path, Path]:
    htpasswd = work / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode().replace("$2b$", "$2y$", 1)
    htpasswd.write_text(f"{USER}:{hashed}\n")
    key = work / "token.key"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return htpasswd, key


def fetch_token(url: str, scope: str) -> str:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/auth/token?service=pier&scope={scope}", headers={"Authorization": f"Basic {basic}"}
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as answer:
        return json.load(answer)["token"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="bursts per mode and method")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each request-rate burst")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to cores")
    args = parser.parse_args()
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench/auth.py needs {tool} (scripts/dev-setup installs it)", file=sys.stderr)
            return 1

    # With two or more cores, servers run on core 1 and every client (this process's
    # children) on core 0, so the two never take turns on one core.
    pinned = len(os.sched_getaffinity(0)) >= 2 and not args.no_pin
    if pinned:
        os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="pier-bench-auth-"))
    try:
        htpasswd, key = write_credentials(work)
        modes = {
            "open": [],
            "basic": ["--htpasswd", str(htpasswd)],
            "token": ["--htpasswd", str(htpasswd), "--token-key", str(key), "--token-lifetime", "1h"],
        }
        size = args.size_mib * MIB
        blob = BlobFile(work / "blob", size, 1)
        digest = blob.use(0)
        seed = start_pier("seed", work, [])
        try:
            push_single_post(seed.port, "bench/blob", blob, digest)
            push_small_image(seed.port, "bench/app", "v1")
        finally:
            seed.stop()
        blob.close()
        (work / "blob").unlink()
        shutil.move(str(work / "seed-data"), str(work / "shared-data"))

        # All three servers run at once (idle but for the one being measured) and the
        # measurements rotate in short bursts: the machine's drift, which is larger than
        # what is measured here, then hits every mode alike.
        servers = {}
        headers: dict[str, dict[str, str]] = {}
        for mode, extra in modes.items():
            (work / f"{mode}-data").symlink_to(work / "shared-data")
            servers[mode] = start_pier(mode, work, ["--max-inflight-requests", "4096", *extra])
            if pinned:
                for thread in os.listdir(f"/proc/{servers[mode].pid}/task"):
                    os.sched_setaffinity(int(thread), {1})
        headers["open"] = {}
        headers["basic"] = {
            "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        }
        scope = "repository:bench/blob:pull%20repository:bench/app:pull"
        headers["token"] = {"Authorization": f"Bearer {fetch_token(servers['token'].url, scope)}"}
        flags = {
            "open": {},
            "basic": {"htpasswd": str(htpasswd)},
            "token": {"htpasswd": str(htpasswd), "token_key": str(key), "token_lifetime": "1h"},
        }
        spec = {mode: (flags[mode], headers[mode]) for mode in modes}
        measured = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, json.dumps(spec), str(work / "shared-data"), "20000", "7"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if measured.returncode != 0:
            raise RuntimeError(f"in-process measurement failed: {measured.stderr[-2000:]}")
        in_process = json.loads(measured.stdout)
        print(
            "in-process manifest HEAD, µs per request (best of 7 runs of 20,000): "
            + ", ".join(f"{mode} {value:.1f}" for mode, value in in_process.items()),
            flush=True,
        )
        results: dict[str, dict[str, list[float]]] = {m: {"pull": [], "head": [], "get": []} for m in modes}
        names = list(modes)
        try:
            for mode in names:  # Basic pays one bcrypt per minute per password, not per request
                pull_curl(f"{servers[mode].url}/v2/bench/app/manifests/v1", -1, headers[mode])
            for burst in range(args.rounds):
                order = names[burst % 3 :] + names[: burst % 3]
                for mode in order:
                    url = f"{servers[mode].url}/v2/bench/blob/blobs/{digest}"
                    results[mode]["pull"].append(size / pull_curl(url, size, headers[mode]) / 1e6)
                for kind, method, runner in (("head", "HEAD", run_builtin), ("get", "GET", run_wrk)):
                    for mode in order:
                        manifest = f"{servers[mode].url}/v2/bench/app/manifests/v1"
                        stats = runner(manifest, method, args.seconds, args.connections, work, headers[mode])
                        if stats["errors"] or not stats["requests"]:
                            raise RuntimeError(f"{mode} {method}: {stats['errors']:.0f} failed requests")
                        results[mode][kind].append(stats["rps"])
                line = ", ".join(
                    f"{mode} {results[mode]['head'][-1]:5.0f}/{results[mode]['get'][-1]:5.0f}"
                    for mode in names
                )
                print(f"burst {burst + 1:2}: HEAD/GET per second: {line}", flush=True)
        finally:
            for mode, server in servers.items():
                server.stop()
                (work / f"{mode}-data").unlink()

        print(
            f"\nmedians of {args.rounds} bursts of {args.seconds:g} s; {args.connections} connections; "
            f"{args.size_mib} MiB blob"
        )
        print("| | open | Basic (htpasswd) | overhead | token | overhead |")
        print("|---|---:|---:|---:|---:|---:|")
        for kind, label, unit, higher_is_better in (
            ("pull", f"Pull {args.size_mib} MiB", "MB/s", True),
            ("head", "Manifest HEAD", "/s", True),
            ("get", "Manifest GET", "/s", True),
        ):
            base = statistics.median(results["open"][kind])
            cells = [f"{base:,.0f} {unit}"]
            for mode in ("basic", "token"):
                value = statistics.median(results[mode][kind])
                overhead = base / value - 1 if higher_is_better else value / base - 1
                cells += [f"{value:,.0f} {unit}", f"{overhead * 100:+.1f}%"]
            print(f"| {label} | " + " | ".join(cells) + " |")
        cells = [f"{in_process['open']:.1f} µs"]
        for mode in ("basic", "token"):
            cells += [
                f"{in_process[mode]:.1f} µs",
                f"{(in_process[mode] / in_process['open'] - 1) * 100:+.1f}%",
            ]
        print("| Manifest HEAD in-process, time per request | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
