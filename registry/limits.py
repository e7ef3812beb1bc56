"""Fair request limits: a cap on requests in flight per process, and a smaller one per client.

A client is the authenticated user (Basic user name, or a token's subject) once the request
is authorized, else the remote address: the per-client slot is taken only after
authentication, so nobody can spend someone else's budget by sending their user name with a
wrong password. One client holding many slow requests then gets 429 while the others are
still served. The operations endpoints (health, readiness, metrics) are never limited, so a
busy server is never mistaken for a dead one.

A place in the process's total is taken together with the client's own place, after the
client's share was checked: a request its client may not make never counts toward the total.
The last eighth of the total (``RESERVE_SHARE``) is kept for clients that hold no request, so
the total is reached only by at least as many distinct clients as that reserve holds (and by
at least total / per-client): a few greedy clients cannot shut everyone else out.
"""

from __future__ import annotations

from starlette.types import Scope

from .auth import ANONYMOUS
from .errors import RegistryError

RETRY_AFTER = "1"  # seconds: requests in flight are short-lived compared to upload sessions
RESERVE_SHARE = 8  # 1/8 of the total is kept for clients holding no request


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
        self.reserve = total // RESERVE_SHARE
        self.inflight = 0
        self._clients: dict[str, int] = {}

    def admit(self, key: str) -> None:
        """Take one of ``key``'s places and one of the total, or raise 429.

        The client's share is checked first; a client already holding a request may not
        take the reserve, which is left to clients holding none.
        """
        held = self._clients.get(key, 0)
        if self.per_client and held >= self.per_client:
            raise busy(f"{held} of your requests are in progress, the limit is {self.per_client}")
        if self.total:
            ceiling = self.total - self.reserve if held else self.total
            if self.inflight >= ceiling:
                raise busy("server busy")
        self._clients[key] = held + 1
        self.inflight += 1

    def release(self, key: str) -> None:
        self.inflight -= 1
        held = self._clients.get(key, 0) - 1
        if held > 0:
            self._clients[key] = held
        else:
            self._clients.pop(key, None)
