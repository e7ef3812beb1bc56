"""Fair request limits: a cap on requests in flight per process, and a smaller one per client.

A client is the authenticated user (Basic user name, or a token's subject) once the request
is authorized, else the remote address: the per-client slot is taken only after
authentication, so nobody can spend someone else's budget by sending their user name with a
wrong password. One client holding many slow requests then gets 429 while the others are
still served. The operations endpoints (health, readiness, metrics) are never limited, so a
busy server is never mistaken for a dead one.
"""

from __future__ import annotations

from starlette.types import Scope

from .auth import ANONYMOUS
from .errors import RegistryError

RETRY_AFTER = "1"  # seconds: requests in flight are short-lived compared to upload sessions


def client_key(scope: Scope) -> str:
    """Who a request counts against: ``user:NAME`` once authenticated, else ``addr:IP``."""
    caller = scope.get("pier.caller")
    if caller is not None and caller.account != ANONYMOUS:
        return f"user:{caller.account}"
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:-"


def busy(message: str) -> RegistryError:
    return RegistryError("TOOMANYREQUESTS", message, headers={"Retry-After": RETRY_AFTER})


class InflightLimiter:
    """Counts requests in flight, in total and per client; 0 turns a limit off."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.inflight = 0
        self._clients: dict[str, int] = {}

    def enter(self) -> bool:
        """Take a place in the process's total; False when it is full."""
        if self.total and self.inflight >= self.total:
            return False
        self.inflight += 1
        return True

    def leave(self) -> None:
        self.inflight -= 1

    def admit(self, key: str) -> None:
        """Take one of ``key``'s places, or raise 429 when it holds them all."""
        held = self._clients.get(key, 0)
        if self.per_client and held >= self.per_client:
            raise busy(f"{held} of your requests are in progress, the limit is {self.per_client}")
        self._clients[key] = held + 1

    def release(self, key: str) -> None:
        held = self._clients.get(key, 0) - 1
        if held > 0:
            self._clients[key] = held
        else:
            self._clients.pop(key, None)
