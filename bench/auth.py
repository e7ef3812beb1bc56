#!/usr/bin/env python3
"""What access control costs: pier open, with Basic auth (htpasswd), and with bearer tokens.

One data folder, one server at a time on loopback (so the modes never compete for the two
cores), the same content in every mode: a 1 GiB blob and a small image. Each round starts
the three modes in turn and measures, with the caller's credentials on every request:

- a pull of the 1 GiB blob with ``curl`` (Basic: the password; token: a bearer token
  fetched from pier's ``/auth/token``);
- manifest ``HEAD``s per second at 16 connections (bench/registry.py's load generator:
  Debian's wrk cannot HEAD) and manifest ``GET``s per second with ``wrk -t1``, and the
  server's CPU time per request during each (from /proc: steadier than rates when the
  machine is shared).

The order of the modes rotates every round. Prints medians over the rounds and each
mode's overhead against the open registry.

    .venv/bin/python bench/auth.py [--rounds 3] [--seconds 8] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry import (
    MIB,
    BlobFile,
    cpu_seconds,
    pull_curl,
    push_single_post,
    push_small_image,
    run_builtin,
    run_wrk,
    start_pier,
)

USER, PASSWORD = "bench", "bench-password"


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
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each request-rate run")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench/auth.py needs {tool} (scripts/dev-setup installs it)", file=sys.stderr)
            return 1

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

        kinds = ("pull", "head", "get", "head_cpu", "get_cpu")
        results: dict[str, dict[str, list[float]]] = {m: {k: [] for k in kinds} for m in modes}
        names = list(modes)
        for round_number in range(args.rounds):
            for mode in names[round_number % 3 :] + names[: round_number % 3]:
                extra = modes[mode]
                (work / f"{mode}-data").symlink_to(work / "shared-data")
                server = start_pier(mode, work, ["--max-inflight-requests", "4096", *extra])
                try:
                    headers: dict[str, str] = {}
                    if mode == "basic":
                        headers["Authorization"] = (
                            "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                        )
                    elif mode == "token":
                        scope = "repository:bench/blob:pull%20repository:bench/app:pull"
                        headers["Authorization"] = f"Bearer {fetch_token(server.url, scope)}"
                    # One request first: Basic pays one bcrypt per minute per password, not per request.
                    pull_curl(f"{server.url}/v2/bench/app/manifests/v1", -1, headers)
                    pull = pull_curl(f"{server.url}/v2/bench/blob/blobs/{digest}", size, headers)
                    results[mode]["pull"].append(size / pull / 1e6)
                    manifest = f"{server.url}/v2/bench/app/manifests/v1"
                    for kind, method, runner in (("head", "HEAD", run_builtin), ("get", "GET", run_wrk)):
                        cpu = cpu_seconds(server.pid)
                        stats = runner(manifest, method, args.seconds, args.connections, work, headers)
                        cpu = cpu_seconds(server.pid) - cpu
                        if stats["errors"] or not stats["requests"]:
                            raise RuntimeError(f"{mode} {method}: {stats['errors']:.0f} failed requests")
                        results[mode][kind].append(stats["rps"])
                        results[mode][f"{kind}_cpu"].append(cpu / stats["requests"] * 1e6)
                finally:
                    server.stop()
                    (work / f"{mode}-data").unlink()
                last = {kind: values[-1] for kind, values in results[mode].items()}
                print(
                    f"round {round_number + 1} {mode:5}: pull {last['pull']:5.0f} MB/s, "
                    f"HEAD {last['head']:5.0f}/s ({last['head_cpu']:.0f} µs CPU each), "
                    f"GET {last['get']:5.0f}/s ({last['get_cpu']:.0f} µs CPU each)",
                    flush=True,
                )

        print(f"\nmedians of {args.rounds} rounds; {args.connections} connections; {args.size_mib} MiB blob")
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
