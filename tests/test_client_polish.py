"""What the client prints: docker's size units, counted nouns, and no control characters from outside."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from puller.store.content_store import ContentStore
from puller.text import human_size, plural, printable

from .helpers import push_blob, push_manifest, run_pier
from .images import OCI_MANIFEST, build_image, build_index, tag_layout, write_blob

pytestmark = pytest.mark.slow  # the pier CLI as a process per step

HOSTILE = "2023-11-14\x00\x1b]0;owned\x07\x1b[2J\u202e"


def visible(text: str) -> bool:
    """No byte a terminal would act on: only printable characters and line ends."""
    return all(char.isprintable() or char == "\n" for char in text)


def test_sizes_are_in_dockers_decimal_units() -> None:
    cases = {0: "0B", 999: "999B", 1000: "1kB", 1234: "1.23kB", 999_999: "1MB", 12_345_678: "12.3MB"}
    cases |= {123_456_789: "123MB", 30 * 10**9: "30GB", 1536 * 1024 * 1024: "1.61GB"}
    assert {size: human_size(size) for size in cases} == cases
    assert [plural(n, "layer") for n in (0, 1, 2)] == ["0 layers", "1 layer", "2 layers"]


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("plain text, ümlaut") == "plain text, ümlaut"
    assert printable(HOSTILE) == "2023-11-14\\x00\\x1b]0;owned\\x07\\x1b[2J\\u202e"
    assert printable("two\nlines") == "two\\nlines"  # an error stays one line


def test_pull_and_unpack_lines(registry, tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[])  # the busybox base: one layer
    for blob in image.blobs:
        push_blob(registry.url, "client/polish", blob)
    push_manifest(registry.url, "client/polish", "v1", image.manifest)
    home, reference = tmp_path / "home", f"{registry.host}/client/polish:v1"
    pulled = run_pier(home, "pull", reference)
    assert pulled.returncode == 0, pulled.stderr
    size = human_size(sum(blob.size for blob in image.blobs))
    assert pulled.stdout.splitlines()[-1] == f"Pulled {reference} (linux/amd64, {size})"
    for line in pulled.stdout.splitlines()[:-2]:  # progress: "<id>: done (1.2MB, 3.4MB/s)"
        assert "bytes" not in line and ("B)" in line or "B/s)" in line), line
    unpacked = run_pier(home, "unpack", reference, str(tmp_path / "rootfs"))
    assert unpacked.stdout == f"Unpacked 1 layer into {tmp_path / 'rootfs'}\n", unpacked.stderr
    removed = run_pier(home, "rmi", reference)
    assert removed.stdout.splitlines()[-1].startswith("Deleted 3 blobs (")
    assert ", 1 unpacked layer (" in removed.stdout.splitlines()[-1]  # the pull unpacked it


def test_a_multi_platform_image_counts_a_shared_layer_once(tmp_path) -> None:
    index = build_index(tmp_path / "layout", "v1")
    home = tmp_path / "home"
    assert (
        run_pier(home, "load", str(tmp_path / "layout"), "--name", "example.org/team/multi").returncode == 0
    )
    distinct = {blob.digest: blob.size for child in index.images for blob in child.blobs}
    assert len(distinct) < sum(len(child.blobs) for child in index.images)  # the base layer is shared
    listing = run_pier(home, "images")
    [row] = listing.stdout.splitlines()[1:]
    assert row.split()[3] == human_size(sum(distinct.values()))


def test_no_control_characters_reach_the_terminal(tmp_path) -> None:
    image = build_image(tmp_path / "layout", "v1", layers=[], cmd=["sh", "-c", "exit 0"])
    config = json.loads(image.config.read())
    config["created"] = HOSTILE
    hostile_config = write_blob(tmp_path / "layout", image.config.media_type, json.dumps(config).encode())
    manifest = json.loads(image.manifest.read())
    manifest["config"] = hostile_config.descriptor()
    tag_layout(
        tmp_path / "layout",
        "v1",
        write_blob(tmp_path / "layout", OCI_MANIFEST, json.dumps(manifest).encode()),
    )
    home = tmp_path / "home"
    assert (
        run_pier(home, "load", str(tmp_path / "layout"), "--name", "example.org/team/hostile").returncode == 0
    )
    listing = run_pier(home, "images")
    assert listing.returncode == 0 and visible(listing.stdout), listing.stdout
    assert "\\x00" in listing.stdout  # shown escaped, not dropped: the user sees something is odd

    ran = run_pier(home, "run", "--name", "odd", "example.org/team/hostile:v1", "echo", "\x1b[2J\u202e")
    assert ran.returncode == 0, ran.stderr
    containers = run_pier(home, "ps", "-a")
    assert visible(containers.stdout) and "\\x1b[2J\\u202e" in containers.stdout, containers.stdout
    assert run_pier(home, "rm", "odd").returncode == 0


@pytest.fixture
def lying_registry():
    """Answers every request 404 with an error message full of terminal escapes."""
    body = json.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": f"no such thing {HOSTILE}"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_registry_error_message_is_printed_escaped(lying_registry, tmp_path) -> None:
    result = run_pier(tmp_path / "home", "pull", f"{lying_registry}/team/app:v1")
    assert result.returncode == 1 and result.stderr.startswith("pier: ")
    assert visible(result.stderr) and result.stderr.count("\n") == 1, repr(result.stderr)
    assert "no such thing 2023-11-14" in result.stderr  # the message itself still shown
    assert ContentStore(tmp_path / "home").get_ref("127.0.0.1/team/app", "v1") is None
