"""A changed or removed password stops working within a second or two, although good logins are
remembered: the htpasswd file is watched and the remembered logins dropped when it changes.

Storage plays no part here, so the servers run on the local disk only.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from .auth_users import USERS, basic
from .helpers import wait_until, write_htpasswd
from .servers import PierServer
from .tokens import write_signing_key

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # waits for the htpasswd file watcher, 2 s at most

LOCKED_OUT_WITHIN = 2.0  # seconds: the file is looked at once a second, plus a margin


def seconds_until(check, timeout: float = 10.0) -> float:
    """How long until ``check()`` holds (an AssertionError when it never does)."""
    started = time.monotonic()
    wait_until(check, timeout, what="the changed htpasswd file to take effect")
    return time.monotonic() - started


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", USERS)


@pytest.fixture
def basic_server(tmp_path: Path, users: Path):
    server = PierServer(tmp_path / "data", "--htpasswd", str(users)).start()
    yield server
    server.stop()


def test_a_changed_then_removed_password_is_refused_within_seconds(basic_server, users: Path) -> None:
    def status(user: str, password: str) -> int:
        return httpx.get(f"{basic_server.url}/v2/", headers=basic(user, password)).status_code

    assert status("bob", "builder") == 200
    assert status("bob", "builder") == 200  # remembered now: no bcrypt on this one
    write_htpasswd(users, {**USERS, "bob": "a new password"})
    assert seconds_until(lambda: status("bob", "builder") == 401) < LOCKED_OUT_WITHIN
    assert status("bob", "a new password") == 200
    assert status("alice", "wonderland") == 200  # the others are checked again, and still pass

    write_htpasswd(users, {"alice": USERS["alice"]})
    assert seconds_until(lambda: status("bob", "a new password") == 401) < LOCKED_OUT_WITHIN
    assert status("bob", "builder") == 401
    assert status("alice", "wonderland") == 200


def test_the_token_server_refuses_a_removed_user_within_seconds(tmp_path: Path, users: Path) -> None:
    key, _ = write_signing_key(tmp_path / "keys")
    server = PierServer(tmp_path / "data", "--htpasswd", str(users), "--token-key", str(key)).start()
    try:

        def token_status(user: str, password: str) -> int:
            reply = httpx.get(
                f"{server.url}/auth/token", params={"service": "pier"}, headers=basic(user, password)
            )
            return reply.status_code

        issued = httpx.get(
            f"{server.url}/auth/token", params={"service": "pier"}, headers=basic("bob", "builder")
        ).json()["token"]
        write_htpasswd(users, {"alice": USERS["alice"]})
        assert seconds_until(lambda: token_status("bob", "builder") == 401) < LOCKED_OUT_WITHIN
        # A token issued before stays valid until it expires (token_lifetime, plus the 30 s of
        # clock skew every token check allows), as the README says.
        bearer = {"Authorization": f"Bearer {issued}"}
        assert httpx.get(f"{server.url}/v2/", headers=bearer).status_code == 200
    finally:
        server.stop()
