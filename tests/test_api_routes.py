"""The route table: every route names an action, unknown methods are 405 (never "push"), the
router answers as the regular expressions it replaced did, and the endpoint list is the table's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import bcrypt
import httpx
import pytest

from registry.config import load_settings
from registry.routes import ACTIONS, ROUTES, Router, describe
from registry.routes.table import REPOSITORY_ACTIONS
from registry.server import create_app

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = {"name": "team/app", "reference": "latest", "uuid": "0123abcd", "digest": "sha256:" + "0" * 64}
UNKNOWN_METHODS = ("PROPFIND", "TRACE", "BREW", "OPTIONS")


def example_path(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: EXAMPLE[m.group(1)], template)


def test_every_route_names_an_allowed_action() -> None:
    assert {"pull", "push", "delete", "catalog", "base", "admin", "token", "operations"} == ACTIONS
    for route in ROUTES:
        assert route.methods, route.template
        for method, endpoint in route.methods.items():
            assert method == method.upper(), (route.template, method)
            assert endpoint.action in ACTIONS, (route.template, method, endpoint.action)
            # Repository actions need the repository in the path, and a repository path needs one.
            assert (endpoint.action in REPOSITORY_ACTIONS) == route.repository, (route.template, method)
            if method in ("GET", "HEAD"):  # reads never delete (an upload's status needs push)
                assert endpoint.action != "delete", (route.template, method)
    assert len({route.template for route in ROUTES}) == len(ROUTES)


@pytest.fixture
def apps(tmp_path: Path) -> dict[str, httpx.AsyncClient]:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    htpasswd.write_text(f"alice:{hashed}\n")
    key = tmp_path / "token.key"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    flags: dict[str, dict[str, object]] = {
        "open": {},
        "htpasswd": {"htpasswd": str(htpasswd), "token_key": str(key)},  # serves /auth/token too
    }
    return {
        mode: httpx.AsyncClient(
            transport=httpx.ASGITransport(
                app=create_app(
                    load_settings({"root": str(tmp_path / "data"), "access_log": False, **extra}, environ={})
                )
            ),
            base_url="http://127.0.0.1:5000",
        )
        for mode, extra in flags.items()
    }


async def test_unknown_methods_are_405_before_auth_and_touch_nothing(
    apps: dict[str, httpx.AsyncClient], tmp_path: Path
) -> None:
    for mode, client in apps.items():
        for route in ROUTES:
            for method in UNKNOWN_METHODS:
                if method in route.methods or (route.needs == "token_server" and mode == "open"):
                    continue
                response = await client.request(method, example_path(route.template))
                where = (mode, method, route.template)
                # An anonymous caller on an htpasswd registry: 405, not 401 for a "push" it never asked.
                assert response.status_code == 405, where
                assert response.json()["errors"][0]["code"] == "UNSUPPORTED", where
                assert response.headers["allow"] == ", ".join(route.methods), where
    repositories = tmp_path / "data" / "docker" / "registry" / "v2" / "repositories"
    assert not repositories.exists() or not any(repositories.iterdir())
    assert (await apps["open"].get("/v2/_catalog")).json() == {"repositories": []}


async def test_metrics_are_labelled_with_the_route_template(apps: dict[str, httpx.AsyncClient]) -> None:
    client = apps["open"]
    assert (await client.head(example_path("/v2/{name}/manifests/{reference}"))).status_code == 404
    assert (await client.request("BREW", "/v2/")).status_code == 405
    assert (await client.get("/v2/no/such/endpoint")).status_code == 404
    metrics = (await client.get("/metrics")).text
    assert 'route="/v2/{name}/manifests/{reference}",status="404"' in metrics
    assert 'method="OTHER",route="/v2/",status="405"' in metrics
    assert 'route="other",status="404"' in metrics
    assert "team/app" not in metrics


# The router this table replaced, verbatim: the new one must route every path the same way.
_N = r"(?P<name>.+)"
OLD_ROUTES = [
    (re.compile(r"/v2/?"), "/v2/"),
    (re.compile(r"/v2/_catalog"), "/v2/_catalog"),
    (re.compile(rf"/v2/{_N}/tags/list"), "/v2/{name}/tags/list"),
    (re.compile(rf"/v2/{_N}/manifests/(?P<reference>[^/]+)"), "/v2/{name}/manifests/{reference}"),
    (re.compile(rf"/v2/{_N}/blobs/uploads/?"), "/v2/{name}/blobs/uploads/"),
    (re.compile(rf"/v2/{_N}/blobs/uploads/(?P<uuid>[^/]+)"), "/v2/{name}/blobs/uploads/{uuid}"),
    (re.compile(rf"/v2/{_N}/blobs/(?P<digest>[^/]+)"), "/v2/{name}/blobs/{digest}"),
    (re.compile(rf"/v2/{_N}/referrers/(?P<digest>[^/]+)"), "/v2/{name}/referrers/{digest}"),
]
PATHS = [
    "/v2",
    "/v2/",
    "/v2//",
    "/v2/_catalog",
    "/v2/_catalog/",
    "/v3/",
    "/v2/a/tags/list",
    "/v2/a/b/tags/list/",
    "/v2/tags/list",
    "/v2//tags/list",
    "/v2/a/manifests/latest",
    "/v2/a/manifests/",
    "/v2/a/manifests/x/",
    "/v2/a/manifests/x\ny",
    "/v2/a\nb/manifests/x",
    "/v2/manifests/x",
    "/v2//manifests/x",
    "/v2/a/manifests/b/manifests/c",
    "/v2/a/blobs/uploads",
    "/v2/a/blobs/uploads/",
    "/v2/a/blobs/uploads/abc",
    "/v2/a/blobs/uploads/abc/",
    "/v2/a/blobs/uploads//",
    "/v2/a/blobs/sha256:00",
    "/v2/a/blobs/blobs/x",
    "/v2/a/blobs/uploads/x/manifests/y",
    "/v2/a/tags/list/manifests/y",
    "/v2/a/referrers/sha256:00",
    "/v2/a/referrers/",
    "/v2/a/b/c/blobs/uploads/x/blobs/uploads/",
    "/v2/_catalog/tags/list",
    "/v2/a//blobs/x",
    "/v2/a/unknown/x",
    "/healthz",
]


@pytest.mark.parametrize("path", PATHS)
def test_the_router_routes_as_the_regular_expressions_did(path: str) -> None:
    expected = None
    for pattern, template in OLD_ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            expected = (template, match.groupdict())
            break
    api = [route for route in ROUTES if route.template.startswith("/v2")]
    found = Router(api).match(path)
    assert (None if found is None else (found[0].template, dict(found[1]))) == expected


def test_the_endpoint_list_is_the_tables() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "registry.routes"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert printed.strip() == describe().strip()
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == sum(len(route.methods) for route in ROUTES)
    for route in ROUTES:
        for method, endpoint in route.methods.items():
            assert any(
                row.startswith(f"| {method} | `{route.template}` | {endpoint.action} |") for row in rows
            ), (method, route.template)


def test_the_readme_shows_the_tables_endpoint_list() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert describe().strip() in readme, "README's endpoint list is stale: paste `python -m registry.routes`"
