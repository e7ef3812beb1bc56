"""oci.auth.respond: the one path from a 401's challenge to what the client or mirror sends."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from oci.auth import AuthFlowError, respond


def test_basic_with_a_login_means_retry_with_basic() -> None:
    assert respond('Basic realm="r"', "https://reg.example", ["repository:a:pull"], has_login=True) is None


def test_basic_without_a_login_is_refused() -> None:
    with pytest.raises(AuthFlowError) as caught:
        respond('Basic realm="r"', "https://reg.example", [], has_login=False)
    assert caught.value.problem == "login-needed"


HOSTILE = ["", "Bearer", 'Bearer realm="unterminated', "Negotiate abc==", "x" * 20000]


@pytest.mark.parametrize("header", HOSTILE)
def test_a_hostile_or_unusable_challenge_is_refused(header: str) -> None:
    with pytest.raises(AuthFlowError) as caught:
        respond(header, "https://reg.example", [], has_login=True)
    assert caught.value.problem == "challenge"


@pytest.mark.parametrize(
    ("registry", "realm"),
    [
        ("https://reg.example", "http://reg.example/token"),  # downgrade
        ("http://127.0.0.1:5000", "http://evil.example/token"),  # plain HTTP elsewhere
        ("https://reg.example", "file:///etc/passwd"),
        ("https://reg.example", "javascript:alert(1)"),
    ],
)
def test_a_realm_that_would_leak_the_login_is_refused(registry: str, realm: str) -> None:
    with pytest.raises(AuthFlowError) as caught:
        respond(f'Bearer realm="{realm}",service="s"', registry, [], has_login=True)
    assert caught.value.problem == "realm"


def test_the_token_is_asked_for_the_wanted_scopes_and_the_challenges() -> None:
    header = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"'
    request = respond(header, "https://reg.example", ["repository:b:push"], has_login=True)
    assert request is not None and request.method == "GET" and request.basic
    query = parse_qs(urlsplit(request.url).query)
    assert query == {"service": ["reg"], "scope": ["repository:a:pull", "repository:b:push"]}


def test_a_refresh_token_is_posted_and_never_sent_as_basic() -> None:
    header = 'Bearer realm="https://auth.example/token",service="reg"'
    scopes = ["repository:a:pull"]
    request = respond(header, "https://reg.example", scopes, has_login=True, refresh_token="r1")
    assert request is not None and request.method == "POST" and not request.basic
    assert request.form is not None and request.form["refresh_token"] == "r1"
