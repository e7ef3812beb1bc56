#!/usr/bin/env python3
"""What watching a registry costs: metrics, JSON access logs and a webhook, on versus off.

pier and distribution (Debian's docker-registry 2.8) each run twice on one data folder:
with everything off, and with Prometheus metrics, a JSON access log line per request
(written to the server's log file, as a container's stdout would be) and one webhook
endpoint (a receiver in this process). Measured, in rotating bursts so the machine's
drift hits every server alike:

- manifest ``HEAD``s per second at 16 connections (bench/api.py's load generator:
  Debian's wrk cannot HEAD) — the issue's figure; HEADs send no events;
- manifest ``GET``s per second at 16 connections (``wrk -t1``): each GET is a pull event,
  which pier writes to storage before it answers (distribution keeps it in memory);
- the server's CPU time per request in those bursts (from /proc): the cost itself, which the
  machine's noise moves much less than it moves throughput.

And the same HEAD in-process (the ASGI app called directly), where the machine's noise
does not reach.

    .venv/bin/python bench/operations.py [--rounds 12] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from api import cpu_seconds, push_small_image, run_builtin, run_wrk, start_pier
from servers import REPO_ROOT, Server, free_port  # bench/servers.py

IN_PROCESS = """
import asyncio, json, sys, time
sys.stdout = open(sys.argv[3], "w")  # the access log's lines
from registry.config import load_settings
from registry.server import create_app

ACCEPT = b"application/vnd.oci.image.manifest.v1+json"
modes, root, count, repeats = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[4]), int(sys.argv[5])

async def main():
    apps = {m: create_app(load_settings({"root": root, **flags}, environ={})) for m, flags in modes.items()}
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        pass
    best = {m: float("inf") for m in modes}
    for _ in range(repeats):
        for mode, app in apps.items():
            scope = {"type": "http", "method": "HEAD", "path": "/v2/bench/app/manifests/v1",
                     "raw_path": b"/v2/bench/app/manifests/v1", "query_string": b"", "scheme": "http",
                     "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 40000), "root_path": "",
                     "headers": [(b"host", b"127.0.0.1:5000"), (b"accept", ACCEPT),
                                 (b"user-agent", b"bench")]}
            started = time.perf_counter()
            for _ in range(count):
                await app(dict(scope), receive, send)
            best[mode] = min(best[mode], (time.perf_counter() - started) / count * 1e6)
            if app.access_log is not None:
                app.access_log.flush()
    print(json.dumps(best), file=sys.stderr)

asyncio.run(main())
"""


class Receiver:
    """Counts the events posted to it (distribution's envelope)."""

    def __init__(self) -> None:
        self.events = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.events += len(body.get("events", []))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"


def start_distribution(label: str, work: Path, root: Path, observed: bool, hook: str) -> Server:
    port = free_port()
    if observed:
        log = "log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: false\n"
        extra = (
            f"  debug:\n    addr: 127.0.0.1:{free_port()}\n    prometheus:\n      enabled: true\n"
            "      path: /metrics\n"
            "notifications:\n  endpoints:\n    - name: bench\n"
            f"      url: {hook}\n      timeout: 1s\n      threshold: 10\n      backoff: 1s\n"
        )
    else:
        log, extra = "log:\n  level: error\n  accesslog:\n    disabled: true\n", ""
    config = work / f"{label}.yml"
    config.write_text(
        "version: 0.1\n" + log + "storage:\n  cache:\n    blobdescriptor: inmemory\n"
        f"  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + extra
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    return Server(label, [binary, "serve", str(config)], port, work / f"{label}.log").start()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=12, help="bursts per server and method")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each burst")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to cores")
    args = parser.parse_args()
    for tool in ("wrk", "docker-registry"):
        if shutil.which(tool) is None:
            print(f"bench/operations.py needs {tool} (scripts/dev-setup installs it)", file=sys.stderr)
            return 1
    pinned = len(os.sched_getaffinity(0)) >= 2 and not args.no_pin
    if pinned:  # servers on core 1, every client (and the receiver) on core 0
        os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="pier-bench-ops-"))
    receiver = Receiver()
    hook = json.dumps([{"name": "bench", "url": receiver.url}])
    observed = ["--metrics", "true", "--access-log", "true", "--log-format", "json", "--notifications", hook]
    try:
        seed = start_pier("seed", work, [])
        try:
            push_small_image(seed.port, "bench/app", "v1")
        finally:
            seed.stop()
        shared = work / "seed-data"
        flags = {
            "pier off": {"metrics": False, "access_log": False},
            "pier on": {"metrics": True, "access_log": True, "log_format": "json", "notifications": hook},
        }
        measured = subprocess.run(
            [
                sys.executable,
                "-c",
                IN_PROCESS,
                json.dumps(flags),
                str(shared),
                str(work / "inproc.log"),
                "20000",
                "7",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if measured.returncode != 0:
            raise RuntimeError(f"in-process measurement failed: {measured.stderr[-2000:]}")
        in_process = json.loads(measured.stderr.strip().splitlines()[-1])
        print(flush=True)
        print(
            "in-process manifest HEAD, µs: " + ", ".join(f"{m} {v:.1f}" for m, v in in_process.items()),
            flush=True,
        )

        servers: dict[str, Server] = {}
        for label, extra in (("pier off", ["--metrics", "false"]), ("pier on", observed)):
            name = label.replace(" ", "-")
            (work / f"{name}-data").symlink_to(shared)
            servers[label] = start_pier(name, work, ["--max-inflight-requests", "4096", *extra])
        # distribution's own layout: its copy of the image, pushed through it
        dist_root = work / "dist-data"
        for label, enabled in (("distribution off", False), ("distribution on", True)):
            servers[label] = start_distribution(
                label.replace(" ", "-"), work, dist_root, enabled, receiver.url
            )
        push_small_image(servers["distribution off"].port, "bench/app", "v1")
        if pinned:
            for server in servers.values():
                for thread in os.listdir(f"/proc/{server.pid}/task"):
                    os.sched_setaffinity(int(thread), {1})
        names = list(servers)
        results: dict[str, dict[str, list[float]]] = {n: {"head": [], "get": []} for n in names}
        cpu: dict[str, dict[str, list[float]]] = {n: {"head": [], "get": []} for n in names}  # µs/request
        failures = dict.fromkeys(names, 0)
        try:
            for burst in range(args.rounds):
                order = names[burst % len(names) :] + names[: burst % len(names)]
                for kind, method, runner in (("head", "HEAD", run_builtin), ("get", "GET", run_wrk)):
                    for label in order:
                        url = f"{servers[label].url}/v2/bench/app/manifests/v1"
                        before = cpu_seconds(servers[label].pid)
                        stats = runner(url, method, args.seconds, args.connections, work)
                        used = cpu_seconds(servers[label].pid) - before
                        if not stats["requests"]:
                            raise RuntimeError(f"{label} {method}: no request answered")
                        if stats["errors"]:  # reported, not hidden: a failed request is not a fast one
                            print(f"    {label} {method}: {stats['errors']:.0f} failed requests", flush=True)
                            failures[label] += int(stats["errors"])
                        results[label][kind].append(stats["rps"])
                        cpu[label][kind].append(used / stats["requests"] * 1e6)
                print(
                    f"burst {burst + 1:2}: HEAD/GET per second: "
                    + ", ".join(
                        f"{n} {results[n]['head'][-1]:.0f}/{results[n]['get'][-1]:.0f}" for n in names
                    ),
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
        statuses: dict[str, int] = {}
        for line in (work / "pier-on.log").read_text(errors="replace").splitlines():
            if '"request_id"' in line:
                status = str(json.loads(line)["status"])
                statuses[status] = statuses.get(status, 0) + 1
            elif '"level": "error"' in line or '"level": "warning"' in line:
                print("    pier on logged:", line[:600])
        print(f"pier on's access log, requests by status: {statuses}")
        print(f"\nmedians of {args.rounds} bursts of {args.seconds:g} s; {args.connections} connections")
        print(f"events received by the webhook: {receiver.events:,}; failed requests: {failures}")
        print("| | pier off | pier on | overhead | distribution off | distribution on | overhead |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        rows = (  # (label, figures, kind, format, overhead): a slower rate and a higher CPU both cost
            ("Manifest HEAD", results, "head", "{:,.0f} /s", lambda off, on: off / on),
            ("Manifest GET (a pull event each)", results, "get", "{:,.0f} /s", lambda off, on: off / on),
            ("Server CPU per HEAD", cpu, "head", "{:.0f} µs", lambda off, on: on / off),
            ("Server CPU per GET", cpu, "get", "{:.0f} µs", lambda off, on: on / off),
        )
        for label, figures, kind, shown, ratio in rows:
            cells = []
            for system in ("pier", "distribution"):
                off = statistics.median(figures[f"{system} off"][kind])
                on = statistics.median(figures[f"{system} on"][kind])
                cells += [shown.format(off), shown.format(on), f"{(ratio(off, on) - 1) * 100:+.1f}%"]
            print(f"| {label} | " + " | ".join(cells) + " |")
        off, on = in_process["pier off"], in_process["pier on"]
        print(
            f"| Manifest HEAD in-process | {off:.1f} µs | {on:.1f} µs | {(on / off - 1) * 100:+.1f}% | | | |"
        )
    finally:
        receiver.server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
