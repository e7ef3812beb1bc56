"""What a platform team watches and relies on: metrics, access logs, health, shutdown, webhooks."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from .helpers import push_blob, push_manifest, wait_until, write_htpasswd
from .images import build_image, sha256, write_blob
from .maintenance import run_storage_command
from .prometheus import metric
from .servers import PierServer, serve_refused

# slow: webhook retries, draining shutdowns, replicas: waits by design
pytestmark = [pytest.mark.backends("filesystem", "s3"), pytest.mark.slow]


def test_metrics_count_requests_by_route_template_storage_and_uploads(
    start_registry, backend: str, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "image", "v1")
    server = start_registry()
    for blob in image.blobs:
        push_blob(server.url, "team/secret-project", blob)
    push_manifest(server.url, "team/secret-project", "v1", image.manifest)
    assert httpx.get(f"{server.url}/v2/team/secret-project/manifests/nope").status_code == 404
    assert httpx.post(f"{server.url}/v2/team/open/blobs/uploads/").status_code == 202  # left open
    text = httpx.get(f"{server.url}/metrics").text
    route = "/v2/{name}/manifests/{reference}"
    assert metric(text, "pier_http_requests_total", route=route, method="PUT", status="201") == 1
    assert metric(text, "pier_http_requests_total", route=route, method="GET", status="404") == 1
    assert metric(text, "pier_http_request_duration_seconds_count", route=route, method="PUT") == 1
    received = metric(text, "pier_http_received_bytes_total", route="/v2/{name}/blobs/uploads/{uuid}")
    assert received == sum(b.size for b in image.blobs)
    commits = metric(text, "pier_storage_operation_duration_seconds_count", operation="commit")
    assert commits >= len(image.blobs) and f'backend="{backend}"' in text
    assert metric(text, "pier_upload_sessions_open") == 1
    assert "secret-project" not in text and image.digest not in text  # templates, never raw paths


def test_gc_runs_and_freed_bytes_are_the_stores_totals(start_registry, tmp_path: Path) -> None:
    server = start_registry()
    orphan = write_blob(tmp_path / "orphan", "application/octet-stream", os.urandom(5000))
    push_blob(server.url, "team/app", orphan)
    server.stop()
    done = run_storage_command(server.storage, "gc", "--grace", "0s")
    assert done.returncode == 0, done.stderr
    server.start()
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "pier_gc_runs_total") == 1
    assert metric(text, "pier_gc_freed_bytes_total") == 5000
    assert time.time() - metric(text, "pier_gc_last_run_timestamp_seconds") < 120


def test_json_access_log_names_route_repository_and_user_and_never_secrets(
    start_registry, tmp_path: Path
) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret-Passw0rd"})
    server = start_registry("--htpasswd", str(htpasswd), "--access-log", "true", "--log-format", "json")
    auth = ("alice", "s3cret-Passw0rd")
    answer = httpx.get(f"{server.url}/v2/team/app/tags/list", auth=auth, headers={"X-Request-Id": "trace-42"})
    assert answer.status_code == 404 and answer.headers["x-request-id"] == "trace-42"
    hostile = httpx.get(f"{server.url}/v2/team/app%0A%22forged%22/manifests/v1", auth=auth)
    assert hostile.status_code in (400, 404)
    server.log_lines('"route": "other"')  # the last request's line is there
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith('{"time"')]
    access = [entry for entry in lines if "request_id" in entry]
    tags = next(entry for entry in access if entry["request_id"] == "trace-42")
    assert tags["user"] == "alice" and tags["repository"] == "team/app" and tags["status"] == 404
    assert tags["route"] == "/v2/{name}/tags/list" and tags["method"] == "GET"
    assert isinstance(tags["duration_ms"], float) and tags["bytes_out"] > 0
    assert all(isinstance(entry["time"], str) for entry in lines)  # the server's own lines are JSON too
    log = server.log()
    assert "s3cret-Passw0rd" not in log and "czNjcmV0" not in log and "YWxpY2U6" not in log


def test_text_access_log_cannot_be_forged_with_a_path(start_registry) -> None:
    server = start_registry("--access-log", "true")
    httpx.get(f"{server.url}/v2/x%0A127.0.0.1:1%20admin%20%22GET%20/v2/%22%20200/tags/list")
    lines = server.log_lines("/tags/list")
    assert len(lines) == 1 and "%0A" in lines[0] and " admin " not in lines[0], lines
    assert lines[0].count('"') == 2  # the path's own quotes are escaped too


def _stream(chunks: int, pause: float) -> Iterator[bytes]:
    for _ in range(chunks):
        time.sleep(pause)  # sleep-ok: a slow client's pace, so the request is in flight a while
        yield b"x" * 65536


def test_sigterm_drains_finishes_in_flight_work_and_another_replica_resumes_the_upload(
    start_registry, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    first = start_registry("--shutdown-delay", "2s", root=shared)
    second = start_registry(root=shared)
    assert httpx.get(f"{first.url}/readyz").status_code == 200
    assert httpx.get(f"{first.url}/healthz").json() == {"status": "alive"}
    location = httpx.post(f"{first.url}/v2/team/big/blobs/uploads/").headers["location"]
    done = httpx.patch(f"{first.url}{location}", content=b"a" * 100_000)
    assert done.status_code == 202
    location = done.headers["location"]

    results: dict[str, httpx.Response] = {}

    def slow_patch() -> None:  # in flight when SIGTERM arrives: 20 pieces over ~3 s
        results["patch"] = httpx.patch(f"{first.url}{location}", content=_stream(20, 0.15), timeout=30)

    worker = threading.Thread(target=slow_patch)
    worker.start()
    wait_until(
        lambda: metric(httpx.get(f"{first.url}/metrics").text, "pier_http_requests_in_flight") >= 1,
        what="the slow PATCH to be in flight",
    )
    assert first.process is not None
    os.kill(first.process.pid, signal.SIGTERM)
    wait_until(
        lambda: httpx.get(f"{first.url}/readyz").status_code == 503, what="readiness to fail after SIGTERM"
    )
    assert httpx.get(f"{first.url}/readyz").status_code == 503  # balancers stop sending work
    assert httpx.get(f"{first.url}/v2/").status_code == 200  # while it still serves
    worker.join()
    assert results["patch"].status_code == 202, results["patch"].text
    first.process.wait(timeout=20)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{first.url}/v2/")

    status = httpx.get(f"{second.url}{location}")  # the rest goes to the other replica
    assert status.status_code == 204 and status.headers["range"] == f"0-{100_000 + 20 * 65536 - 1}"
    tail = b"z" * 1000
    body = b"a" * 100_000 + b"x" * 65536 * 20 + tail
    finished = httpx.put(f"{second.url}{location}", params={"digest": sha256(body)}, content=tail)
    assert finished.status_code == 201, finished.text
    assert httpx.get(f"{second.url}/v2/team/big/blobs/{sha256(body)}").content == body


# -- webhooks ----------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback that fails (500) until told to recover."""

    def __init__(self) -> None:
        self.failing = True
        self.deliveries: list[tuple[str, object]] = []  # (content type, body) of accepted posts
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.failing:
                    receiver.refused += 1
                    self.send_response(500)
                else:
                    receiver.deliveries.append((self.headers["content-type"], json.loads(body)))
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def events(self) -> list[dict]:
        found = []
        for content_type, body in self.deliveries:
            if content_type == "application/vnd.docker.distribution.events.v1+json":
                assert isinstance(body, dict)
                found += body["events"]
            else:
                assert isinstance(body, list)
                found += [{"cloudevent": True, **event} for event in body]
        return found


def test_webhooks_survive_a_failing_receiver_and_a_restart_and_arrive_once(
    start_registry, tmp_path: Path
) -> None:
    receiver = Receiver()
    endpoints: list[dict[str, object]] = [
        {"name": "audit", "url": receiver.url, "backoff": "0.2s", "max_backoff": "1s"},
        {
            "name": "deploys",
            "url": receiver.url,
            "events": ["push"],
            "repositories": ["team/*"],
            "format": "cloudevents",
            "headers": {"Authorization": "Bearer hook-token"},
        },
    ]
    config = tmp_path / "pier.toml"
    config.write_text(_toml_tables("notifications", endpoints))
    image = build_image(tmp_path / "image", "v1")
    shared = tmp_path / "shared"
    server = start_registry("--config", str(config), root=shared)
    for repo in ("team/app", "other/app"):
        for blob in image.blobs:
            push_blob(server.url, repo, blob)
        push_manifest(server.url, repo, "v1", image.manifest)
    assert httpx.get(f"{server.url}/v2/team/app/manifests/v1").status_code == 200
    assert httpx.delete(f"{server.url}/v2/other/app/manifests/v1").status_code == 202
    wait_until(lambda: receiver.refused >= 2, what="two refused deliveries")
    assert receiver.refused >= 2 and not receiver.deliveries  # retried, with backoff
    server.stop()
    store = server.storage
    queued = [line for path in store.files("_events/audit") for line in store.read(path).splitlines()]
    assert len(queued) == 4  # two pushes, a pull, a delete: stored before they were answered

    receiver.failing = False
    server.start()
    wait_until(lambda: len(receiver.events()) >= 5, 20, what=lambda: f"5 events; got {receiver.events()}")
    events = receiver.events()
    plain = [e for e in events if "cloudevent" not in e]
    assert sorted((e["action"], e["target"]["repository"]) for e in plain) == [
        ("delete", "other/app"),
        ("pull", "team/app"),
        ("push", "other/app"),
        ("push", "team/app"),
    ]
    assert len({e["id"] for e in plain}) == 4
    push = next(e for e in plain if e["action"] == "push" and e["target"]["repository"] == "team/app")
    assert push["target"]["digest"] == image.digest and push["target"]["tag"] == "v1"
    assert push["target"]["url"].endswith(f"/v2/team/app/manifests/{image.digest}")
    clouds = [e for e in events if "cloudevent" in e]
    assert [(c["type"], c["subject"]) for c in clouds] == [("io.pier.registry.push", "team/app:v1")]
    assert clouds[0]["specversion"] == "1.0" and clouds[0]["data"]["target"]["digest"] == image.digest
    time.sleep(2.5)  # sleep-ok: nothing is delivered twice; an absence has no event to wait for
    assert len(receiver.events()) == 5
    assert not store.files("_events/audit")
    receiver.server.shutdown()


def _toml_tables(key: str, tables: list[dict]) -> str:
    out = []
    for table in tables:
        out.append(f"[[{key}]]")
        for name, value in table.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
                out.append(f"{name} = {{ {inner} }}")
            else:
                out.append(f"{name} = {json.dumps(value)}")
    return "\n".join(out) + "\n"


def test_bad_webhook_settings_are_refused_in_one_line(tmp_path: Path) -> None:
    done = serve_refused(tmp_path, "--notifications", '[{"url": "http://x", "events": ["build"]}]')
    assert done.returncode == 2 and "events must be among push, pull, delete" in done.stderr
    assert "Traceback" not in done.stderr


def test_replicas_on_one_store_deliver_each_event_once_in_batches(start_registry, tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.failing = False
    hook = json.dumps([{"name": "pulls", "url": receiver.url, "events": ["pull"]}])
    image = build_image(tmp_path / "image", "v1")
    shared = tmp_path / "shared"
    replicas = [start_registry("--notifications", hook, root=shared) for _ in range(2)]
    for blob in image.blobs:
        push_blob(replicas[0].url, "team/app", blob)
    push_manifest(replicas[0].url, "team/app", "v1", image.manifest)

    def pull(server: PierServer) -> None:
        with httpx.Client() as http:
            for _ in range(10):
                assert http.get(f"{server.url}/v2/team/app/manifests/v1").status_code == 200

    threads = [threading.Thread(target=pull, args=(replicas[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(
        lambda: len(receiver.events()) >= 80, 20, what=lambda: f"80 events; got {len(receiver.events())}"
    )
    time.sleep(2.5)  # sleep-ok: a second dispatcher would have posted by now; an absence has no event
    events = receiver.events()
    assert len(events) == 80 and len({e["id"] for e in events}) == 80
    assert {e["action"] for e in events} == {"pull"}
    assert len(receiver.deliveries) < 80  # batched
    receiver.server.shutdown()
