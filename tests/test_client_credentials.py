"""Credentials come from docker's config file exactly where docker keeps them."""

from __future__ import annotations

import base64
import json

import pytest

from puller.transfer.credentials import CredentialsError, lookup
from puller.transfer.transport import Credentials


@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")

    def write(config: dict) -> None:
        (tmp_path / "config.json").write_text(json.dumps(config))

    return write


def auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_no_config_means_anonymous(docker_config) -> None:
    assert lookup("localhost:5000") is None


def test_auths_by_host_and_docker_hub_legacy_key(docker_config) -> None:
    docker_config(
        {"auths": {"localhost:5000": auth("a", "1"), "https://index.docker.io/v1/": auth("hub", "2")}}
    )
    assert lookup("localhost:5000") == Credentials("a", "1")
    assert lookup("docker.io") == Credentials("hub", "2")
    assert lookup("ghcr.io") is None


def test_credential_helpers(docker_config, tmp_path) -> None:
    helper = tmp_path / "docker-credential-testhelper"
    helper.write_text(
        '#!/bin/sh\nread server\necho "{\\"Username\\": \\"from-helper\\", \\"Secret\\": \\"$server\\"}"\n'
    )
    helper.chmod(0o755)
    docker_config({"credHelpers": {"ghcr.io": "testhelper"}, "auths": {"ghcr.io": auth("ignored", "x")}})
    assert lookup("ghcr.io") == Credentials("from-helper", "ghcr.io")
    docker_config({"credsStore": "testhelper"})
    assert lookup("registry.example") == Credentials("from-helper", "registry.example")
    docker_config({"credsStore": "missing"})
    with pytest.raises(CredentialsError, match="docker-credential-missing is not installed"):
        lookup("registry.example")


def test_broken_config_is_a_clear_error(docker_config, tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="not valid JSON"):
        lookup("localhost:5000")
    docker_config({"auths": {"h": {"auth": "%%%"}}})
    with pytest.raises(CredentialsError, match="not valid base64"):
        lookup("h")


@pytest.mark.parametrize(
    "config, message",
    [
        ([1, 2], "does not hold a JSON object"),
        ({"auths": ["localhost:5000"]}, "auths is not an object"),
        ({"auths": {"localhost:5000": {"auth": 5}}}, "not an object of strings"),
        ({"credHelpers": "testhelper"}, "credHelpers is not an object"),
        ({"credsStore": {"name": "x"}}, "credsStore is not a helper name"),
    ],
)
def test_a_config_of_the_wrong_shape_is_a_clear_error(docker_config, config, message) -> None:
    docker_config(config)
    with pytest.raises(CredentialsError, match=message):
        lookup("localhost:5000")


@pytest.mark.parametrize("answer", ["not json", "[1]", '{"Username": 5, "Secret": "x"}'])
def test_a_helper_answering_garbage_is_a_clear_error(docker_config, tmp_path, answer) -> None:
    helper = tmp_path / "docker-credential-broken"
    helper.write_text(f"#!/bin/sh\ncat > /dev/null\necho '{answer}'\n")
    helper.chmod(0o755)
    docker_config({"credsStore": "broken"})
    with pytest.raises(CredentialsError, match="answered something other than credentials"):
        lookup("registry.example")
