"""Garbage answers from a real local server to ``pier pull``, ``push`` and ``login``.

hypothesis writes the server's answers (status codes, headers such as WWW-Authenticate,
Retry-After, Content-Length, Location and Docker-Content-Digest, random or plausible JSON
bodies); the CLI's ``main()`` runs in this process against it. Whatever the server says,
the client must end with one line and an exit code, never a traceback; it writes nothing
outside its store and docker's config folder; and whatever it stores matches its digest.
Retries do not sleep here (their delays are recorded and must stay bounded).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import puller.transfer.transport
from puller.cli import main
from puller.store.content_store import ContentStore

from .images import Image, build_image
from .scripted import Answer, Request, ScriptedServer

pytestmark = pytest.mark.slow  # hypothesis against real servers

EXAMPLES = int(os.environ.get("PIER_FUZZ_EXAMPLES") or 60)  # per run, for the 15 minutes; more for a hunt
MAX_DELAY = 30.0  # the longest Retry-After the client may honour


KINDS = ("base", "token", "manifest", "blob-head", "blob", "upload-start", "upload")


def kind_of(request: Request) -> str:
    """Which step of a pull, push or login a request is: each step has its own answers."""
    path = request.path
    if path.startswith("/token"):
        return "token"
    if "/blobs/uploads" in path or path.startswith("/upload"):
        return "upload-start" if request.method == "POST" else "upload"
    if "/blobs/" in path:
        return "blob-head" if request.method == "HEAD" else "blob"
    return "manifest" if "/manifests/" in path else "base"


class Scripted:
    """The answers of one example, per kind of request, served in order; the last one repeats."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.served: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Answer:
        kind = kind_of(request)
        with self.lock:
            answers = self.answers.get(kind) or [Answer(404)]
            count = self.served.get(kind, 0)
            self.served[kind] = count + 1
        return answers[min(count, len(answers) - 1)]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ScriptedServer, Scripted]]:
    script = Scripted()
    with ScriptedServer(script) as running:
        yield running, script


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build_image(tmp_path_factory.mktemp("fuzz-image"), "v1")


def _values(host: str) -> dict[str, st.SearchStrategy[str]]:
    """Plausible and hostile values for the headers a registry client reads."""
    latin = st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
    )
    realm = st.sampled_from(
        [
            f"http://{host}/token",
            f"https://{host}/token",
            "http://localhost:1/token",
            "ftp://x/",
            "/token",
            "",
        ]
    )
    challenge = st.one_of(
        st.builds(
            lambda r, s: f'Bearer realm="{r}",service="{s}"', realm, latin.filter(lambda t: '"' not in t)
        ),
        st.sampled_from(
            ['Basic realm="r"', "Basic", "Negotiate abc==", 'Bearer service="x"', "Bearer realm="]
        ),
        latin,
    )
    digest = st.one_of(
        st.just("sha256:" + "0" * 64), st.just("sha256:../../x"), st.text("0123456789abcdef:sha", max_size=20)
    )
    return {
        "WWW-Authenticate": challenge,
        "Retry-After": st.one_of(st.sampled_from(["²", "٣", "1", "30", "99999", "-1", "1.5", "Wed"]), latin),
        "Content-Length": st.one_of(st.sampled_from(["0", "5", "-1", "abc", "99999999"]), latin),
        "Location": st.one_of(
            st.sampled_from(
                [
                    "/v2/fuzz/app/blobs/uploads/u1",
                    "/v2/fuzz/app/blobs/uploads/u1?a=b",
                    f"http://{host}/elsewhere",
                    "http://127.0.0.1:1/x",
                    "file:///etc/passwd",
                    "../../../../etc/passwd",
                    "http://[::1",
                    "",
                ]
            ),
            latin,
        ),
        "Docker-Content-Digest": digest,
        "Content-Type": st.sampled_from(
            [
                "application/json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "text/html",
            ]
        ),
        "Content-Range": st.one_of(st.sampled_from(["bytes 0-1/2", "bytes 5-", "x"]), latin),
        "Content-Encoding": st.sampled_from(["gzip", "br", "zstd", "identity", "x"]),
    }


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_descriptor = st.fixed_dictionaries(
    {},
    optional={
        "digest": st.one_of(st.just("sha256:" + "0" * 64), st.text(max_size=20), _json),
        "size": st.one_of(st.integers(-5, 2**64), _json),
        "mediaType": st.one_of(st.just("application/vnd.oci.image.layer.v1.tar+gzip"), _json),
        "platform": st.one_of(st.just({"os": "linux", "architecture": "amd64"}), _json),
    },
)
_document = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.one_of(st.just(2), _json),
        "mediaType": st.sampled_from(
            ["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json", "x"]
        ),
        "config": st.one_of(_descriptor, _json),
        "layers": st.one_of(st.lists(_descriptor, max_size=3), _json),
        "manifests": st.one_of(st.lists(_descriptor, max_size=3), _json),
        "token": st.one_of(st.text(max_size=20), _json),
        "access_token": _json,
        "expires_in": st.one_of(st.sampled_from(["soon", -1, 0, 1e308, 300]), _json),
        "errors": st.one_of(
            st.lists(
                st.fixed_dictionaries({}, optional={"code": _json, "message": _json, "detail": _json}),
                max_size=2,
            ),
            _json,
        ),
    },
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda value: json.dumps(value).encode()),
    _document.map(lambda value: json.dumps(value).encode()),
    st.integers(1, 80).map(lambda depth: b"[" * (depth * 100) + b"]" * (depth * 100)),
)


def _answers(
    host: str, plausible: dict[str, list[Answer]], real: tuple[bytes, ...] = ()
) -> st.SearchStrategy[dict[str, list[Answer]]]:
    """Answers for each kind of request: garbage, or what a registry would say at that step
    (``plausible``, sometimes with a hostile header), which leads the client deeper."""
    values = _values(host)
    bodies = st.one_of(_bodies, st.sampled_from(real)) if real else _bodies
    header = st.sampled_from(sorted(values)).flatmap(lambda name: st.tuples(st.just(name), values[name]))
    status = st.one_of(
        st.sampled_from(
            [200, 201, 202, 204, 206, 301, 302, 307, 308, 400, 401, 403, 404, 416, 429, 500, 503]
        ),
        st.integers(200, 599),
    )
    garbage = st.builds(Answer, status, st.lists(header, max_size=4), bodies)

    def per_kind(kind: str) -> st.SearchStrategy[list[Answer]]:
        spiced = st.builds(
            lambda answer, extra: Answer(answer.status, [*answer.headers, *extra], answer.body),
            st.sampled_from(plausible[kind]),
            st.lists(header, max_size=1),
        )
        return st.lists(st.one_of(spiced, garbage), min_size=1, max_size=4)

    return st.fixed_dictionaries({kind: per_kind(kind) for kind in KINDS})


def _plausible(host: str, image: Image | None = None) -> dict[str, list[Answer]]:
    """What a registry says at each step of a pull, push or login (its token flow included)."""
    bearer = Answer(401, [("WWW-Authenticate", f'Bearer realm="http://{host}/token",service="reg"')])
    basic = Answer(401, [("WWW-Authenticate", 'Basic realm="reg"')])
    unknown = Answer(404, body=b'{"errors": [{"code": "BLOB_UNKNOWN", "message": "unknown"}]}')
    answers = {
        "base": [Answer(200), bearer, basic],
        "token": [Answer(200, [("Content-Type", "application/json")], b'{"token": "t", "expires_in": 300}')],
        "manifest": [Answer(201), bearer],
        "blob-head": [unknown, Answer(200), bearer],
        "blob": [unknown, bearer],
        "upload-start": [Answer(202, [("Location", "/v2/fuzz/app/blobs/uploads/u1?state=1")]), bearer],
        "upload": [Answer(201), Answer(204), bearer],
    }
    if image is not None:
        manifest = [("Content-Type", image.manifest.media_type), ("Docker-Content-Digest", image.digest)]
        answers["manifest"].append(Answer(200, manifest, image.manifest.read()))
        for blob in image.blobs:
            content = blob.read()
            ranged = ("Content-Range", f"bytes 0-{len(content) - 1}/{len(content)}")
            answers["blob"] += [Answer(200, body=content), Answer(206, [ranged], content)]
    return answers


@contextlib.contextmanager
def _sandbox(home: Path | None = None) -> Iterator[Path]:
    """A fresh folder holding the client's whole world: HOME, cwd, PIER_HOME, docker's config."""
    with tempfile.TemporaryDirectory(prefix="pier-fuzz-") as raw:
        root = Path(raw)
        for name in ("home", "cwd", "docker"):
            (root / name).mkdir()
        saved, cwd = dict(os.environ), os.getcwd()
        os.environ.update(
            HOME=str(root / "home"),
            PIER_HOME=str(home or root / "pier"),
            DOCKER_CONFIG=str(root / "docker"),
            PIER_CERTS_DIR=str(root / "certs.d"),
        )
        os.chdir(root / "cwd")
        try:
            yield root
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(saved)


def _written_outside(root: Path) -> list[str]:
    allowed = (root / "pier", root / "docker")
    return [
        str(path)
        for path in root.rglob("*")
        if path.is_file() and not any(path.is_relative_to(folder) for folder in allowed)
    ]


def _unverified_blobs(home: Path) -> list[str]:
    """Stored blobs whose bytes are not what their name says."""
    store = ContentStore(home)
    wrong = []
    for digest in store.blobs():
        algorithm, _, hexdigest = digest.partition(":")
        if hashlib.new(algorithm, store.path(digest).read_bytes()).hexdigest() != hexdigest:
            wrong.append(digest)
    return wrong


def _run(
    args: list[str], answers: dict[str, list[Answer]], script: Scripted, monkeypatch: pytest.MonkeyPatch
) -> int:
    """``pier ARGS`` in this process: its exit code; a traceback on stderr fails the test."""
    script.answers, script.served = answers, {}
    delays: list[float] = []
    monkeypatch.setattr(puller.transfer.transport, "pause", delays.append)
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = main(args)
    assert "Traceback" not in stderr.getvalue(), stderr.getvalue()
    assert all(0 <= delay <= MAX_DELAY for delay in delays), delays
    if code != 0:
        assert stderr.getvalue().count("\n") == 1 and stderr.getvalue().startswith("pier: "), (
            stderr.getvalue()
        )
    if not any(200 <= answer.status < 300 for kind in answers.values() for answer in kind):
        assert code == 1, (code, stdout.getvalue())  # nothing but errors can never be a success
    assert code in (0, 1)
    return code


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
def test_pull_survives_any_answer(server, image, monkeypatch, data) -> None:
    running, script = server
    real = tuple(blob.read() for blob in (image.manifest, *image.blobs))
    answers = data.draw(_answers(running.host, _plausible(running.host, image), real))
    with _sandbox() as root:
        code = _run(["pull", "-q", f"{running.host}/fuzz/app:v1"], answers, script, monkeypatch)
        if code == 0:  # only the real image, in the order asked for, can be pulled
            assert ContentStore(root / "pier").get_ref(f"{running.host}/fuzz/app", "v1") == image.digest
        assert _written_outside(root) == []
        if (root / "pier").exists():
            assert _unverified_blobs(root / "pier") == []


@FUZZ
@given(data=st.data())
def test_push_survives_any_answer(server, image, monkeypatch, data) -> None:
    running, script = server
    answers = data.draw(_answers(running.host, _plausible(running.host)))
    with _sandbox() as root:
        store = ContentStore(root / "pier")
        for blob in (image.manifest, *image.blobs):
            store.put(blob.digest, blob.read())
        store.set_ref(f"{running.host}/fuzz/app", "v1", image.digest)
        before = sorted(store.blobs())
        _run(["push", "-q", f"{running.host}/fuzz/app:v1"], answers, script, monkeypatch)
        assert sorted(store.blobs()) == before
        assert _written_outside(root) == []


@FUZZ
@given(data=st.data())
def test_login_survives_any_answer(server, monkeypatch, data) -> None:
    running, script = server
    answers = data.draw(_answers(running.host, _plausible(running.host)))
    with _sandbox() as root:
        code = _run(["login", "-u", "fuzz", "-p", "pw", running.host], answers, script, monkeypatch)
        assert _written_outside(root) == []
        saved = (root / "docker" / "config.json").exists()
        assert saved == (code == 0)  # credentials are kept only for a login that succeeded
