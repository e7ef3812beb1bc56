"""The shared auth rules of ``oci``: challenge grammar, token answers, realm policy, strict headers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oci.challenge import MAX_HEADER, Challenge, ChallengeError, choose, parse_challenges
from oci.headers import retry_after
from oci.jsonsafe import UntrustedJSONError, loads
from oci.policy import PolicyError, check_realm, same_origin
from oci.tokens import DEFAULT_LIFETIME, TokenError, parse_token_response, token_request


def test_a_docker_hub_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/python:pull,push"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/python:pull,push",  # a comma inside quotes stays
            },
        )
    ]


def test_rfc7235_example_with_several_challenges_and_escapes() -> None:
    header = 'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"'
    assert parse_challenges(header) == [
        Challenge("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
        Challenge("basic", {"realm": "simple"}),
    ]


def test_names_are_case_insensitive_and_whitespace_around_equals_is_allowed() -> None:
    [challenge] = parse_challenges('BEARER Realm = "https://r.example/t" ,\tSERVICE=reg')
    assert challenge == Challenge("bearer", {"realm": "https://r.example/t", "service": "reg"})


def test_token68_and_bare_schemes() -> None:
    assert parse_challenges("Negotiate abc+/9==, Basic, Bearer realm=x") == [
        Challenge("negotiate", {}, "abc+/9=="),
        Challenge("basic", {}),
        Challenge("bearer", {"realm": "x"}),
    ]


@pytest.mark.parametrize(
    "header",
    [
        "",
        " , ,",
        'Bearer realm="unterminated',
        'Bearer realm="x" service="y"',  # no comma between parameters
        'Bearer realm="a", realm="https://evil.example"',  # a parameter twice: which one counts?
        "Bearer realm=, service=x",  # token68 "realm=", then no scheme
        '="x"',
        "Bearer realm=a b",
        "Bear\x00er realm=x",
        'Bearer realm="ctl\x01char"',
        "Bearer " + ", ".join(f"p{i}=v" for i in range(100)),
        "Basic " + "a" * MAX_HEADER,
    ],
)
def test_hostile_headers_are_refused_with_a_challenge_error(header: str) -> None:
    with pytest.raises(ChallengeError):
        parse_challenges(header)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_never_crashes(header: str) -> None:
    try:
        challenges = parse_challenges(header)
    except ChallengeError:
        return
    for challenge in challenges:
        assert challenge.scheme == challenge.scheme.lower()
        assert all(name == name.lower() for name in challenge.params)


def test_choose_prefers_bearer_with_a_realm_then_basic() -> None:
    assert choose('Basic realm="r", Bearer realm="https://t"').scheme == "bearer"
    assert choose('Bearer service="no realm", Basic realm="r"').scheme == "basic"
    with pytest.raises(ChallengeError, match="no supported challenge"):
        choose("Negotiate abc==")


def test_token_requests_get_with_scopes_or_post_with_a_refresh_token() -> None:
    get = token_request("https://t.example/token", "reg", ["repository:a:pull", "repository:b:pull"])
    assert get.method == "GET" and not get.basic and get.form is None
    assert get.url == (
        "https://t.example/token?service=reg&scope=repository%3Aa%3Apull&scope=repository%3Ab%3Apull"
    )
    assert token_request("https://t/x?a=1", None, ["s"], has_login=True).url == "https://t/x?a=1&scope=s"
    assert token_request("https://t/x", None, [], has_login=True).basic
    post = token_request("https://t/x", "reg", ["s1", "s2"], refresh_token="rt")
    assert post.method == "POST" and post.url == "https://t/x"
    assert post.form == {
        "grant_type": "refresh_token",
        "refresh_token": "rt",
        "client_id": "pier",
        "service": "reg",
        "scope": "s1 s2",
    }


@pytest.mark.parametrize(
    "expires_in, lifetime",
    [
        (300, 300.0),
        (0.5, 0.5),
        ("soon", DEFAULT_LIFETIME),
        ("300", DEFAULT_LIFETIME),
        (None, DEFAULT_LIFETIME),
        (True, DEFAULT_LIFETIME),
        (-5, DEFAULT_LIFETIME),
        (0, DEFAULT_LIFETIME),
        ([60], DEFAULT_LIFETIME),
        (1e308 * 10, DEFAULT_LIFETIME),  # json.dumps writes Infinity, which Python's json reads back
    ],
)
def test_expires_in_other_than_a_positive_finite_number_means_the_default(expires_in, lifetime) -> None:
    import json

    body = json.dumps({"token": "t", "expires_in": expires_in, "issued_at": 12}).encode()
    token = parse_token_response(body)
    assert token.value == "t" and token.lifetime == lifetime and math.isfinite(token.lifetime)


def test_access_token_is_accepted_when_token_is_missing_or_empty() -> None:
    assert parse_token_response(b'{"access_token": "a"}').value == "a"
    assert parse_token_response(b'{"token": "", "access_token": "a"}').value == "a"


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"token": 5}', "no token"),
        (b'{"token": ""}', "no token"),
        (b'{"token": {"nested": 1}}', "no token"),
        (b'{"token": "a\\r\\nX-Injected: 1"}', "characters"),
        (b"[" * 100_000, "not JSON"),
        (b'{"token": "' + b"a" * (2 << 20) + b'"}', "over"),
    ],
)
def test_token_answers_without_a_usable_token_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        parse_token_response(body)


@pytest.mark.parametrize(
    "registry, realm",
    [
        ("https://reg.example", "https://auth.example/token"),
        ("http://127.0.0.1:5000", "https://auth.example/token"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token"),  # same host, any port
        ("http://reg.example", "HTTP://REG.example/token"),
    ],
)
def test_allowed_realms(registry: str, realm: str) -> None:
    check_realm(registry, realm)


@pytest.mark.parametrize(
    "registry, realm, reason",
    [
        ("https://reg.example", "http://auth.example/token", "downgrade"),
        ("https://reg.example", "http://reg.example/token", "downgrade"),
        ("http://127.0.0.1:5000", "http://auth.example/token", "another host"),
        ("https://reg.example", "ftp://reg.example/token", "not an http"),
        ("https://reg.example", "/token", "not an http"),
        ("https://reg.example", "https://reg.example:99999/token", "not a valid URL"),
    ],
)
def test_refused_realms(registry: str, realm: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason):
        check_realm(registry, realm)


def test_same_origin_fills_default_ports_and_refuses_bad_urls() -> None:
    assert same_origin("https://a.example/x", "https://A.example:443/y")
    assert not same_origin("https://a.example", "http://a.example")
    assert not same_origin("https://a.example", "https://a.example.evil")
    assert not same_origin("https://a.example:1/", "https://a.example:bad/")


@pytest.mark.parametrize(
    "value, seconds",
    [("3", 3.0), (" 7 ", 7.0), ("999", 30.0), ("²", None), ("٣", None), ("1.5", None), ("-1", None)],
)
def test_retry_after_is_ascii_delta_seconds_only(value: str, seconds: float | None) -> None:
    assert retry_after(value) == seconds
    assert retry_after(None) is None


def test_deep_json_is_refused_before_parsing() -> None:
    with pytest.raises(UntrustedJSONError, match="nested"):
        loads(b"[" * 50_000 + b"]" * 50_000)
    assert loads(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    with pytest.raises(UntrustedJSONError, match="not valid JSON"):
        loads(b"\xff")
