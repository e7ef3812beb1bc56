"""The client's answer to a registry's 401, through oci.auth: what it refuses, in its own words.

A scripted registry on 127.0.0.1 challenges; the client must never send a login where the
shared policy forbids it, and must say why in one line.
"""

from __future__ import annotations

import base64

import pytest

from puller.transfer.credentials import Credentials
from puller.transfer.transport import RegistryRequestError, Transport

from .scripted import Answer, Request, ScriptedServer

LOGIN = Credentials("alice", "s3cret")


def challenging(header: str) -> ScriptedServer:
    def script(request: Request) -> Answer:
        if request.path.startswith("/token"):
            return Answer(200, [("Content-Type", "application/json")], b'{"token": "t"}')
        if request.headers.get("authorization") in (
            "Bearer t",
            "Basic " + base64.b64encode(b"alice:s3cret").decode(),
        ):
            return Answer(200, [("Content-Type", "application/json")], b"{}")
        return Answer(401, [("WWW-Authenticate", header)])

    return ScriptedServer(script)


def get(server: ScriptedServer, credentials: Credentials | None) -> int:
    transport = Transport(server.host, credentials=credentials, retries=0)
    with transport.stream("GET", "/v2/", "") as response:
        return response.status_code


def test_a_plain_http_realm_on_another_host_gets_no_login() -> None:
    with challenging('Bearer realm="http://localhost:9/token",service="x"') as server:
        with pytest.raises(
            RegistryRequestError, match=r"not sending credentials: .*plain HTTP on another host"
        ):
            get(server, LOGIN)
        assert all("authorization" not in r.headers for r in server.requests)


def test_basic_without_a_login_is_a_clear_refusal() -> None:
    with (
        challenging('Basic realm="pier"') as server,
        pytest.raises(RegistryRequestError, match="requires a login"),
    ):
        get(server, None)


@pytest.mark.parametrize("header", ['Bearer service="no realm"', "Negotiate", 'Bearer realm="ftp://x/token"'])
def test_an_unusable_challenge_is_named(header: str) -> None:
    with challenging(header) as server, pytest.raises(RegistryRequestError) as refused:
        get(server, LOGIN)
    assert server.host in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_token_from_a_same_host_realm_and_basic_both_work() -> None:
    with challenging("") as server:
        server.script = challenging(f'Bearer realm="{server.url}/token",service="s"').script
        assert get(server, LOGIN) == 200
        token_requests = [r for r in server.requests if r.path.startswith("/token")]
        assert len(token_requests) == 1
    with challenging('Basic realm="pier"') as server:
        assert get(server, LOGIN) == 200
