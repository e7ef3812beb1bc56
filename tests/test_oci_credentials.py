"""``oci.credentials``: what a docker ``config.json`` holds for a registry, read as docker reads it."""

from __future__ import annotations

import base64

import pytest

from oci.credentials import (
    DOCKER_HUB_KEY,
    ConfigError,
    Helper,
    Login,
    find_login,
    keys,
    parse_config,
    parse_helper_answer,
    server_key,
)


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_every_docker_hub_host_is_filed_under_the_legacy_key() -> None:
    config = {"auths": {DOCKER_HUB_KEY: {"auth": auth("hub", "pw")}}}
    for host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert find_login(config, host) == Login("hub", "pw")
        assert server_key(host) == DOCKER_HUB_KEY


def test_a_registry_under_any_of_its_spellings() -> None:
    for key in keys("reg.example:5000"):
        assert find_login(
            {"auths": {key: {"auth": auth("u", "p:with:colons")}}}, "reg.example:5000"
        ) == Login("u", "p:with:colons")
    assert find_login({"auths": {"other.example": {"auth": auth("u", "p")}}}, "reg.example") is None


def test_helpers_identity_tokens_and_plain_fields() -> None:
    assert find_login({"credHelpers": {"r.example": "pass"}}, "r.example") == Helper("pass", "r.example")
    assert find_login({"credsStore": "desktop"}, "docker.io") == Helper("desktop", DOCKER_HUB_KEY)
    assert find_login({"credsStore": "desktop"}, "r.example", helpers=False) is None
    token = {"auths": {"r.example": {"username": "u", "identitytoken": "refresh"}}}
    assert find_login(token, "r.example") == Login("u", "", identity_token="refresh")
    plain = {"auths": {"r.example": {"username": "u", "password": "p"}}}
    assert find_login(plain, "r.example") == Login("u", "p")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "json"),
        ("[1, 2]", "document"),
        ('"a string"', "document"),
        ("[" * 10_000 + "]" * 10_000, "json"),
    ],
)
def test_hostile_files(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    assert refused.value.problem == problem


@pytest.mark.parametrize(
    "config, problem",
    [
        ({"auths": ["r.example"]}, "section"),
        ({"auths": {"r.example": {"auth": "%%%"}}}, "base64"),
        ({"auths": {"r.example": {"auth": 5}}}, "entry"),
        ({"auths": {"r.example": "text"}}, "entry"),
        ({"credHelpers": "pass"}, "section"),
        ({"credsStore": {"name": "x"}}, "helper"),
    ],
)
def test_hostile_configs(config: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        find_login(config, "r.example")
    assert refused.value.problem == problem


def test_helper_answers() -> None:
    assert parse_helper_answer('{"Username": "u", "Secret": "s"}', "h") == Login("u", "s")
    assert parse_helper_answer('{"Username": "<token>", "Secret": "t"}', "h") == Login("<token>", "", "t")
    for answer in ("not json", "[1]", '{"Username": 5}', "[" * 10_000):
        with pytest.raises(ConfigError, match="answered something other than credentials"):
            parse_helper_answer(answer, "h")
