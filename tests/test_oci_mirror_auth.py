"""The mirror follows the same auth rules as the client, through the same ``oci`` code."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from .scripted import Answer, ScriptedServer
from .servers import serve_refused


@pytest.mark.parametrize(
    "challenge",
    [
        'Bearer realm="http://localhost:{port}/token",service="reg"',  # plain HTTP, another host
        'Bearer realm="http://127.0.0.1:{port}/token", realm="http://localhost:{port}/token"',  # ambiguous
        'Bearer realm="http://127.0.0.1:{port}/token',  # unterminated: not guessed at
    ],
)
def test_the_mirror_sends_its_upstream_login_to_no_realm_the_rules_refuse(start_registry, challenge) -> None:
    with ScriptedServer(lambda request: Answer(200, body=b'{"token": "t"}')) as realm:
        header = challenge.format(port=realm.server.server_address[1])
        with ScriptedServer(lambda request: Answer(401, [("WWW-Authenticate", header)])) as upstream:
            mirror = start_registry(
                "--proxy", f"up=http://alice:secret@{upstream.host}", "--proxy-timeout", "5s"
            )
            answer = httpx.get(f"{mirror.url}/v2/up/library/app/manifests/v1", timeout=30)
            assert upstream.requests, "the mirror never asked its upstream"
    assert answer.status_code >= 400 and answer.json()["errors"], answer.text
    assert realm.requests == []  # the login never left for a realm the rules refuse


def test_the_mirror_uses_a_realm_on_its_http_upstreams_own_host(start_registry) -> None:
    def upstream_script(request):
        if request.path.startswith("/token"):
            return Answer(200, body=b'{"token": "t", "expires_in": "soon"}')
        if request.headers.get("authorization") != "Bearer t":
            realm = f"http://{request.headers['host']}/token"
            return Answer(401, [("WWW-Authenticate", f'Bearer realm="{realm}",service="reg"')])
        return Answer(404, body=b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no"}]}')

    with ScriptedServer(upstream_script) as upstream:
        mirror = start_registry("--proxy", f"up=http://alice:secret@{upstream.host}", "--proxy-timeout", "5s")
        answer = httpx.get(f"{mirror.url}/v2/up/library/app/manifests/v1", timeout=30)
    assert answer.status_code == 404, answer.text
    token_requests = [r for r in upstream.requests if r.path.startswith("/token")]
    assert len(token_requests) == 1 and token_requests[0].headers["authorization"].startswith("Basic ")
    query = parse_qs(urlsplit(token_requests[0].path).query)
    assert query == {"service": ["reg"], "scope": ["repository:library/app:pull"]}


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"auths": {"a.example": {"auth": "%%%"}}}', "is not base64"),
        ('{"auths": ["a.example"]}', "auths is not an object"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_a_broken_proxy_auth_file_is_refused_in_one_line(tmp_path, content: str, message: str) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(content)
    done = serve_refused(
        tmp_path / "data", "--proxy", "https://a.example", "--proxy-auth-file", str(auth_file)
    )
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
