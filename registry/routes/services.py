"""What every handler works with: the settings, the store, access control, the mirror, webhooks.

One object built once per process and passed to each handler as its first argument, so a
handler module is a set of plain functions readable on its own, with no class to inherit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from ..auth import ACTION_ORDER, ANONYMOUS, Access, Caller
from ..config import Settings
from ..errors import RegistryError
from ..governance.service import Actor, Governance
from ..manifests import MANIFEST_TYPES
from ..metrics import Metrics
from ..notifications import Notifier
from ..references import is_digest
from ..space import SpaceWatch
from ..store import RegistryStore
from ..token_server import TokenServer
from ..uploads import Uploads

if TYPE_CHECKING:
    from ..mirror import Mirror, Route

NEEDED = {action: frozenset({action}) for action in ACTION_ORDER}
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


@dataclass
class Services:
    settings: Settings
    store: RegistryStore
    uploads: Uploads
    notifier: Notifier
    auth: Access | None  # None: an open registry
    mirror: Mirror | None
    metrics: Metrics | None
    token_server: TokenServer | None  # serves /auth/token when token_key is set
    governance: Governance
    space: SpaceWatch = field(default_factory=SpaceWatch)  # a write failed for lack of space
    draining: bool = False  # set on SIGTERM: /readyz fails so balancers stop sending work

    def caller(self, request: Request) -> Caller:
        caller: Caller | None = request.scope.get("pier.caller")
        return caller or Caller(ANONYMOUS)

    def actor(self, request: Request) -> Actor:
        """The caller as the audit log records it."""
        client = request.scope.get("client")
        account = self.caller(request).account
        return Actor(
            "" if account == ANONYMOUS else account,
            client[0] if client else "",
            request.scope.get("pier.request_id", ""),
        )

    def allowed(self, account: str, name: str) -> frozenset[str]:
        """What ``account`` may do in repository ``name``, by the ACL: for the web UI, whose
        sessions carry a user name, not a token."""
        if self.auth is None:
            return frozenset(ACTION_ORDER)
        acl = self.auth.acl
        return acl.allowed(account, name) if acl is not None else frozenset()

    async def login(self, user: str, password: str) -> bool:
        """The registry's own users (htpasswd), for the web UI's login form."""
        logins = getattr(self.auth, "logins", None) or getattr(self.token_server, "logins", None)
        return logins is not None and await logins.check(user, password)

    def password_fingerprint(self, user: str) -> str | None:
        """A digest of the user's stored password hash (None: no such user), so a web UI
        session ends when the password changes or the user is removed."""
        logins = getattr(self.auth, "logins", None) or getattr(self.token_server, "logins", None)
        return logins.htpasswd.fingerprint(user) if logins is not None else None

    def is_admin(self, account: str) -> bool:
        return self.governance.is_admin(account)

    def may_pull(self, request: Request, name: str) -> bool:
        return self.auth is None or self.auth.may_pull(self.caller(request), name)

    def visible(self, request: Request, name: str) -> bool:
        return self.auth is None or self.auth.visible_in_catalog(self.caller(request), name)

    def check_delete(self) -> None:
        if not self.settings.delete_enabled:
            raise RegistryError("UNSUPPORTED", "deletes are disabled on this registry")

    async def mirror_route(self, request: Request, name: str) -> Route | None:
        """Where a mirrored name comes from; a bare name must also be pullable as what it maps to."""
        if self.mirror is None:
            return None
        route = await self.mirror.route(name)
        if route is not None and route.local != name and self.auth is not None:
            self.auth.authorize(self.caller(request), route.local, NEEDED["pull"])
        return route

    async def notify(self, request: Request, action: str, name: str, target: dict[str, object]) -> None:
        """Queue the event in storage before the request is answered (a no-op without endpoints)."""
        if not self.notifier.endpoints:
            return
        client = request.scope.get("client")
        caller = request.scope.get("pier.caller")
        details = {
            "id": request.scope.get("pier.request_id", ""),
            "addr": f"{client[0]}:{client[1]}" if client else "",
            "host": request.headers.get("host", ""),
            "method": request.method,
            "useragent": request.headers.get("user-agent", ""),
            "user": caller.account if caller is not None and caller.account != ANONYMOUS else "",
        }
        if "digest" in target:
            kind = (
                "manifests" if action != "delete" and target.get("mediaType") in MANIFEST_TYPES else "blobs"
            )
            target = {**target, "url": f"{base_url(request)}/v2/{name}/{kind}/{target['digest']}"}
        await self.notifier.publish(action, name, dict(target), details)


def base_url(request: Request) -> str:
    """This server as the client reached it, for a token realm on it; a strange Host is not echoed."""
    host = request.headers.get("host", "")
    if not _HOST.fullmatch(host):
        server = request.scope.get("server") or ("127.0.0.1", 5000)
        host = f"{server[0]}:{server[1]}"
    return f"{request.scope.get('scheme', 'http')}://{host}"


def manifest_target(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size, "length": size}


def blob_target(digest: str, size: int | None) -> dict[str, object]:
    target: dict[str, object] = {"mediaType": "application/octet-stream", "digest": digest}
    if size is not None:
        target["size"] = target["length"] = size
    return target


def tag_of(reference: str) -> dict[str, str]:
    return {} if is_digest(reference) else {"tag": reference}
