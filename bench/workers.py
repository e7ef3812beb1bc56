#!/usr/bin/env python3
"""Manifest GET requests per second against ``pier serve --workers 1``, ``2`` and ``4`` (issue 24).

One server per worker count (``--fsync false``, a fresh temporary store each), one small image
pushed to each (a 4 KiB layer, a config, an OCI manifest tagged ``v1``). Then, the servers
taking turns in an order that rotates each round, ``GET /v2/bench/small/manifests/v1`` over
``--connections`` keep-alive connections for ``--duration`` seconds, after a 1 s warm-up.

Reported per worker count (medians of ``--repeats``): req/s and its ratio to 1 worker, p50
and p99 latency, the server's CPU (parent and workers, from ``/proc``), the load generator's
CPU (``getrusage`` of the reaped child), and how the requests were spread over the workers:
the per-worker ``pier_http_requests_total`` of ``/metrics`` (registry/workers.py), read
before and after each run.

The load generator: ``wrk -t1`` if installed (one thread: the client shares the machine's
cores with the servers), else ``hey -cpus 1``, else bench/api.py's own uvloop generator in
``--generators`` processes; ``--tool`` picks one. The CPU the machine spent on neither is
reported too ("others"): on a shared machine it tells which runs someone else's load skewed,
and ``--wait-quiet CORES`` waits before each run until the machine is that quiet, and does a
run again (up to 4 times) when others used more than that during it.

    .venv/bin/python bench/workers.py [--workers 1,2,4] [--repeats 3] [--duration 10]
        [--connections 64] [--tool auto|wrk|hey|builtin] [--generators 1] [--wait-quiet 0.2]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from api import LOAD_GENERATORS, cpu_seconds, machine_facts, push_small_image, start_pier
from servers import Server

ROUTE = "/v2/{name}/manifests/{reference}"
QUIET_ATTEMPTS = 5  # with --wait-quiet: a run others' load skewed is done again, this often at most
SNAPSHOT_WAIT = 2.0  # seconds: the workers write their counts for each other every second
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def requests_by_worker(server: Server) -> dict[str, float]:
    """Manifest GETs answered so far, by the ``worker`` label (``"0"`` for a single process)."""
    with _NO_PROXY.open(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"pier_http_requests_total\{(.*)\} (\S+)", line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("route") == ROUTE and labels.get("method") == "GET" and labels.get("status") == "200":
            worker = labels.get("worker", "0")
            found[worker] = found.get(worker, 0.0) + float(match.group(2))
    return found


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (``/proc/stat``): what neither the
    server nor the load generator used was used by someone else, whose load skews the run."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU of this process's children that have ended and been reaped: the load generators."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def generate(tool: str, url: str, seconds: float, connections: int, generators: int, work: Path) -> dict:
    """One load run; with ``generators`` > 1 (the built-in tool), that many processes at once,
    the connections split between them (their p50: request-weighted mean; p99: the worst)."""
    if generators == 1:
        return dict(LOAD_GENERATORS[tool](url, "GET", seconds, connections, work))
    shares = [connections // generators + (i < connections % generators) for i in range(generators)]
    results: list[dict] = [{} for _ in shares]

    def one(index: int) -> None:
        results[index] = dict(LOAD_GENERATORS[tool](url, "GET", seconds, shares[index], work))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(generators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests = sum(r["requests"] for r in results)
    return {
        "rps": sum(r["rps"] for r in results),
        "requests": requests,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": sum(r["p50_ms"] * r["requests"] for r in results) / max(requests, 1),
        "p99_ms": max(r["p99_ms"] for r in results),
    }


def wait_quiet(cores: float, patience: float = 900.0) -> None:
    """On a shared machine: wait until the machine is busy less than ``cores`` (over 2 s), so
    a run does not start in the middle of someone else's; gives up after ``patience`` s."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        busy = machine_busy_seconds()
        time.sleep(2.0)
        if (machine_busy_seconds() - busy) / 2.0 < cores:
            return
    print(f"  (the machine stayed busier than {cores} cores for {patience:.0f} s: running anyway)")


def measure(server: Server, args: argparse.Namespace, tool: str, work: Path) -> dict:
    url = f"{server.url}/v2/bench/small/manifests/v1"
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    generate(tool, url, 1, args.connections, args.generators, work)  # warm-up
    time.sleep(SNAPSHOT_WAIT)
    before = requests_by_worker(server)
    server_cpu, generator_cpu = cpu_seconds(server.pid), children_cpu_seconds()
    busy = machine_busy_seconds()
    started = time.perf_counter()
    stats = generate(tool, url, args.duration, args.connections, args.generators, work)
    elapsed = time.perf_counter() - started
    stats["server_cores"] = (cpu_seconds(server.pid) - server_cpu) / elapsed
    stats["generator_cores"] = (children_cpu_seconds() - generator_cpu) / elapsed
    stats["other_cores"] = max(
        0.0, (machine_busy_seconds() - busy) / elapsed - stats["server_cores"] - stats["generator_cores"]
    )
    time.sleep(SNAPSHOT_WAIT)
    after = requests_by_worker(server)
    stats["by_worker"] = {w: after[w] - before.get(w, 0.0) for w in sorted(after, key=int)}
    return stats


def pick_tool(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    for tool in ("wrk", "hey"):
        if shutil.which(tool):
            return tool
    return "builtin"


def one_run(stats: dict, tool: str) -> str:
    return (
        f"{stats['rps']:,.0f} req/s, p50 {stats['p50_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms, "
        f"errors {stats['errors']:.0f}, server {stats['server_cores']:.2f} cores, "
        f"{tool} {stats['generator_cores']:.2f} cores, others {stats['other_cores']:.2f} cores, "
        f"by worker {[int(v) for v in stats['by_worker'].values()]}"
    )


def shares(by_worker: dict[str, float]) -> str:
    total = sum(by_worker.values()) or 1.0
    return " / ".join(f"{100 * count / total:.0f}" for count in by_worker.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tool", choices=["auto", *LOAD_GENERATORS], default="auto")
    parser.add_argument("--generators", type=int, default=1, help="processes of the built-in tool")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="CORES",
        help="wait until others use less before each run; redo a run they used more in",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tool = pick_tool(args.tool)
    if args.generators > 1 and tool != "builtin":
        parser.error("--generators applies to --tool builtin")
    counts = [int(n) for n in args.workers.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    skipped: dict[int, list[dict]] = {n: [] for n in counts}  # runs others' load skewed
    with tempfile.TemporaryDirectory(prefix="pier-workers-bench-") as folder:
        work = Path(folder)
        servers: dict[int, Server] = {}
        try:
            for n in counts:
                servers[n] = start_pier(f"w{n}", work, ["--workers", str(n), "--fsync", "false"])
                push_small_image(servers[n].port, "bench/small", "v1")
            for round_ in range(args.repeats):
                order = counts[round_ % len(counts) :] + counts[: round_ % len(counts)]
                for n in order:
                    for attempt in range(QUIET_ATTEMPTS):
                        stats = measure(servers[n], args, tool, work)
                        again = bool(args.wait_quiet) and stats["other_cores"] > args.wait_quiet
                        again = again and attempt + 1 < QUIET_ATTEMPTS
                        note = " (skewed by others' load: again)" if again else ""
                        print(f"round {round_ + 1}, {n} worker(s): {one_run(stats, tool)}{note}", flush=True)
                        if not again:
                            break
                        skipped[n].append(stats)
                    runs[n].append(stats)
        finally:
            for server in servers.values():
                server.stop()
        facts = machine_facts(work)

    def median(n: int, key: str) -> float:
        return statistics.median(run[key] for run in runs[n])

    base = median(counts[0], "rps")
    print(
        f"\nManifest GET, {args.connections} keep-alive connections, {tool}"
        f"{f' x{args.generators}' if args.generators > 1 else ''}, {args.duration:g} s runs, "
        f"medians of {args.repeats} ({facts['nproc']} cores, {facts['cpu']}):\n"
    )
    print(
        "| Workers | req/s | vs 1 worker | p50 ms | p99 ms | server CPU (cores) | generator CPU (cores) "
        "| others' CPU (cores) | requests per worker, % (each run) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n in counts:
        spread = "; ".join(shares(run["by_worker"]) for run in runs[n])
        print(
            f"| {n} | {median(n, 'rps'):,.0f} | {median(n, 'rps') / base:.2f}x | {median(n, 'p50_ms'):.2f} "
            f"| {median(n, 'p99_ms'):.2f} | {median(n, 'server_cores'):.2f} "
            f"| {median(n, 'generator_cores'):.2f} | {median(n, 'other_cores'):.2f} | {spread} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": facts,
                    "tool": tool,
                    "args": vars(args) | {"json": str(args.json)},
                    "runs": runs,
                    "skewed": skipped,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
