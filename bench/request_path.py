#!/usr/bin/env python3
"""What one request costs the server: an in-process manifest HEAD, open, with Basic auth and with a token.

No sockets, no HTTP parsing, no other process: the ASGI app is called directly with a HEAD
scope for ``/v2/bench/app/manifests/v1``, so the figure is the request path alone (routing,
auth, the store's lookups, metrics, the response). Each checkout given with ``--repo`` is
measured in a process of its own started in that folder (so ``registry`` is that checkout's
package), on a store it fills itself through its own API: one small image. The checkouts take
turns, round after round, so the machine's drift hits them alike; each figure is the best
run of all rounds. The store's own share (``store.resolve`` of the tag, called directly) is
shown beside the open figure: what the request layer costs is the difference.

    .venv/bin/python bench/request_path.py                          # this checkout
    .venv/bin/python bench/request_path.py --repo /tmp/before --repo .   # side by side
    .venv/bin/python bench/request_path.py --profile token          # where a HEAD spends (open, basic, token)

Basic uses an htpasswd entry at bcrypt cost 4 (a verified login is remembered, so the cost
is paid once); the token comes from the app's own ``/auth/token``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Run with a checkout as the working directory (``python -c``: sys.path[0] is that folder).
WORKER = r'''
import asyncio, base64, cProfile, hashlib, io, json, os, pstats, shutil, sys, tempfile, time

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.config import load_settings
from registry.server import create_app

count, repeats, profile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
USER, PASSWORD = "bench", "bench-password"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def scope(method, path, query=b"", headers=()):
    return {"type": "http", "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "query_string": query, "scheme": "http",
            "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 40000), "root_path": "",
            "headers": [(b"host", b"127.0.0.1:5000"), *headers]}


async def call(app, method, path, query=b"", headers=(), body=b""):
    """One request through the app; its status and body."""
    sent = [False]

    async def receive():
        if sent[0]:
            await asyncio.sleep(3600)
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    reply = {"status": 0, "body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            reply["status"] = message["status"]
        elif message["type"] == "http.response.body":
            reply["body"] += message.get("body", b"")

    await app(scope(method, path, query, headers), receive, send)
    return reply["status"], reply["body"]


async def push_image(app):
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    blobs = [config, os.urandom(512)]
    digests = []
    for blob in blobs:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        length = [(b"content-length", str(len(blob)).encode())]
        status, _ = await call(app, "POST", "/v2/bench/app/blobs/uploads/", f"digest={digest}".encode(),
                               length, blob)
        assert status == 201, f"blob upload answered {status}"
        digests.append((digest, len(blob)))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digests[0][0], "size": digests[0][1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digests[1][0], "size": digests[1][1]}],
    }).encode()
    headers = [(b"content-type", MANIFEST_TYPE.encode()), (b"content-length", str(len(manifest)).encode())]
    status, _ = await call(app, "PUT", "/v2/bench/app/manifests/v1", b"", headers, manifest)
    assert status == 201, f"manifest PUT answered {status}"


async def main():
    work = tempfile.mkdtemp(prefix="pier-bench-request-path-")
    try:
        await measure(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def measure(work):
    root = os.path.join(work, "data")
    htpasswd = os.path.join(work, "htpasswd")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    with open(htpasswd, "w") as out:
        out.write(f"{USER}:{hashed}\n")
    key = os.path.join(work, "token.key")
    with open(key, "wb") as out:
        out.write(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    flags = {
        "open": {},
        "basic": {"htpasswd": htpasswd},
        "token": {"htpasswd": htpasswd, "token_key": key, "token_lifetime": "1h"},
    }
    apps = {mode: create_app(load_settings({"root": root, "access_log": False, **extra}, environ={}))
            for mode, extra in flags.items()}
    await push_image(apps["open"])
    status, body = await call(apps["token"], "GET", "/auth/token",
                              b"service=pier&scope=repository:bench/app:pull",
                              [(b"authorization", BASIC.encode())])
    assert status == 200, f"token request answered {status}: {body[:200]!r}"
    token = json.loads(body)["token"]
    auth = {"open": [], "basic": [(b"authorization", BASIC.encode())],
            "token": [(b"authorization", f"Bearer {token}".encode())]}
    path = "/v2/bench/app/manifests/v1"
    scopes = {mode: scope("HEAD", path, b"", [(b"accept", MANIFEST_TYPE.encode()), *auth[mode]])
              for mode in flags}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses = []

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run(mode, n):
        app, template = apps[mode], scopes[mode]
        started = time.perf_counter()
        for _ in range(n):
            await app(dict(template), receive, send)
        return (time.perf_counter() - started) / n * 1e6

    for mode in flags:  # warm up: Basic's one bcrypt, caches, the first metrics series
        await run(mode, 200)
    best = {mode: float("inf") for mode in flags}
    for _ in range(repeats):
        for mode in flags:
            best[mode] = min(best[mode], await run(mode, count))
            if set(statuses) != {200}:
                raise SystemExit(f"{mode}: statuses {sorted(set(statuses))}")
            statuses.clear()
    store = apps["open"].store  # the storage's share of a HEAD: resolving the tag alone
    best["store"] = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            await store.resolve("bench/app", "v1")
        best["store"] = min(best["store"], (time.perf_counter() - started) / count * 1e6)
    result = {"us": best}
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await run(profile, count)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        result["profile"] = text.getvalue()
    print(json.dumps(result))


asyncio.run(main())
'''


def measure(repo: Path, count: int, repeats: int, profile: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(count), str(repeats), profile],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {repo} failed:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repo",
        action="append",
        type=Path,
        help="a pier checkout to measure (repeat to compare; default: this one)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="turns each checkout takes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode in a turn")
    parser.add_argument("--count", type=int, default=5000, help="requests per timed run")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="open",
        default="",
        choices=["open", "basic", "token"],
        help="print cProfile's top functions for one mode (default: open)",
    )
    args = parser.parse_args()
    repos = [repo.resolve() for repo in (args.repo or [REPO_ROOT])]
    best: dict[Path, dict[str, float]] = {repo: {} for repo in repos}
    for round_number in range(args.rounds):
        for repo in repos:
            result = measure(repo, args.count, args.repeats, args.profile if round_number == 0 else "")
            figures = result["us"]
            assert isinstance(figures, dict)
            for mode, value in figures.items():
                best[repo][mode] = min(best[repo].get(mode, float("inf")), value)
            if "profile" in result:
                print(f"== {repo}: {args.profile} manifest HEAD, cProfile (its own overhead inflates times)")
                print(result["profile"])
    print(
        f"in-process manifest HEAD, µs per request (best of {args.rounds} x {args.repeats} runs "
        f"of {args.count:,})"
    )
    print("| checkout | open | of which store.resolve | Basic (htpasswd) | overhead | token | overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for repo, figures in best.items():
        cells = [f"{figures['open']:.1f} µs", f"{figures['store']:.1f} µs"]
        for mode in ("basic", "token"):
            cells += [f"{figures[mode]:.1f} µs", f"{(figures[mode] / figures['open'] - 1) * 100:+.1f}%"]
        print(f"| {repo} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
