"""Who may do what: users from an htpasswd file, an ordered ACL, and the two ways to prove it.

Every request is checked before its handler runs, with the same answers whether or not the
repository exists. With ``htpasswd`` auth the caller sends Basic credentials on every
request: 401 ``UNAUTHORIZED`` (with a ``WWW-Authenticate`` challenge) when they have not
proven who they are and would need to, 403 ``DENIED`` when they have and may not. With
``token`` auth the caller sends a bearer token from the token server named in the
challenge, and the token alone says what it may do: 401 with the scope to ask for when it
does not cover the request.

The htpasswd file is the one ``htpasswd -B`` writes; only bcrypt entries are accepted,
checked at the cost they were written with. bcrypt is slow on purpose, so it runs off the
event loop, and a verified (user, password) pair is remembered for a minute under a keyed hash
(BLAKE2b, a per-process key): the password itself is never kept, logged or echoed. The file is
looked at (one ``stat``) at most once a second: when it changed, it is re-read and every
remembered login is forgotten, so a changed or removed password stops working within a second.
Verified tokens are remembered the same way until they expire: a token issued before a user was
removed stays valid until then (``token_lifetime``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import fnmatch
import hashlib
import logging
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from .errors import RegistryError
from .tokens import Claims, TokenError, TokenVerifier

log = logging.getLogger("pier.auth")

ANONYMOUS = "anonymous"
ACTION_ORDER = ("pull", "push", "delete")  # the order scopes list them in
ACTIONS = frozenset(ACTION_ORDER)
REALM = "pier"
CACHE_SECONDS = 60.0
RELOAD_SECONDS = 1.0  # the htpasswd file is looked at no more often than this
RECENT_SECONDS = 2.0  # a file changed this recently is read even when its stamp is unchanged
MAX_CACHED = 4096
MAX_HEADER = 4096
MAX_BEARER = 16 * 1024
MAX_PENDING_LOGINS = 64
# bcrypt gets threads of its own: a flood of logins must not starve storage I/O of the default pool.
_BCRYPT = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="bcrypt")
_DUMMIES: dict[int, bytes] = {}


def _dummy_hash(like: bytes) -> bytes:
    """A real bcrypt hash at the cost of ``like``: an unknown user takes as long as a known one."""
    try:
        cost = int(like[4:6])
    except ValueError:
        cost = 10
    cost = min(max(cost, 4), 31)
    if cost not in _DUMMIES:
        _DUMMIES[cost] = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost))
    return _DUMMIES[cost]


class AuthConfigError(ValueError):
    pass


class Htpasswd:
    """``user:$2y$...`` lines; re-read when the file changes, so users can be added live."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, ...] | None = None
        self._users: dict[str, bytes] = {}
        self._text: str | None = None
        self._lock = threading.Lock()  # bcrypt threads and the event loop both reload
        self._checked = time.monotonic()
        self.generation = 0  # counts the contents read: a change means logins must be checked again
        self._load()

    def refresh(self) -> int:
        """Re-read the file if it changed, looking at most once a second; its generation."""
        now = time.monotonic()
        if now - self._checked >= RELOAD_SECONDS:
            self._checked = now
            self._current()
        return self.generation

    def _load(self) -> None:
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        info = self.path.stat()
        stamp = (info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_size)
        # A rewrite of the same size within one tick of the file system's clock keeps the
        # stamp: while it is that recent, the contents are compared as well.
        if stamp == self._stamp and time.time() - info.st_mtime > RECENT_SECONDS:
            return
        text = self.path.read_text()
        if text == self._text:
            self._stamp = stamp
            return
        users = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise AuthConfigError(f"{self.path}:{number}: expected user:hash")
            if not hashed.startswith(("$2y$", "$2b$", "$2a$")):
                raise AuthConfigError(f"{self.path}:{number}: only bcrypt entries are accepted (htpasswd -B)")
            users[user] = hashed.encode()
        self._users, self._stamp, self._text = users, stamp, text
        self.generation += 1

    def _current(self) -> dict[str, bytes]:
        try:
            self._load()
        except (OSError, AuthConfigError) as exc:
            log.error("htpasswd file unusable, keeping the last good copy: %s", exc)
        return self._users

    def fingerprint(self, user: str) -> str | None:
        """A short digest of the user's stored hash: it changes when the password does."""
        hashed = self._current().get(user)
        return hashlib.sha256(hashed).hexdigest()[:16] if hashed else None

    def verify(self, user: str, password: str) -> bool:
        users = self._current()
        hashed = users.get(user)
        # bcrypt reads 72 bytes (htpasswd stored no more); an unknown user costs what a known one does.
        secret = password.encode()[:72]
        matched = bcrypt.checkpw(secret, hashed or _dummy_hash(next(iter(users.values()), b"$2y$10$")))
        return matched and hashed is not None


@dataclass(frozen=True)
class Rule:
    account: str  # a user name, "anonymous", or "*" for any authenticated user
    repository: str  # a glob; "${account}" stands for the caller's own name
    actions: frozenset[str]

    def grants(self, account: str, repository: str) -> frozenset[str] | None:
        if self.account == "*":
            if account == ANONYMOUS:
                return None
        elif self.account != account:
            return None
        pattern = self.repository.replace("${account}", re.sub(r"([*?\[])", r"[\1]", account))
        return self.actions if fnmatch.fnmatchcase(repository, pattern) else None


@dataclass
class Acl:
    """Ordered rules: the first rule matching the caller and the repository decides."""

    rules: list[Rule] = field(default_factory=list)
    # The rules never change once loaded, so decisions are remembered (a bounded memo).
    _decided: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def default(cls) -> Acl:
        return cls([Rule("*", "*", ACTIONS)])  # every authenticated user, everything

    @classmethod
    def load(cls, path: str) -> Acl:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AuthConfigError(f"acl {path}: {exc}") from None
        rules = []
        for number, raw in enumerate(data.get("rule", []), 1):
            unknown = set(raw) - {"account", "repository", "actions"}
            if unknown or not {"account", "repository", "actions"} <= set(raw):
                raise AuthConfigError(f"acl {path}: rule {number} needs account, repository, actions only")
            actions = set(raw["actions"])
            if "*" in actions:
                actions = set(ACTIONS)
            if not actions <= ACTIONS:
                raise AuthConfigError(
                    f"acl {path}: rule {number}: unknown actions {sorted(actions - ACTIONS)}"
                )
            rules.append(Rule(str(raw["account"]), str(raw["repository"]), frozenset(actions)))
        if set(data) - {"rule"}:
            raise AuthConfigError(f"acl {path}: unknown keys {sorted(set(data) - {'rule'})}")
        return cls(rules)

    def allowed(self, account: str, repository: str) -> frozenset[str]:
        decided = self._decided.get((account, repository))
        if decided is None:
            decided = next(
                (g for g in (rule.grants(account, repository) for rule in self.rules) if g is not None),
                frozenset(),
            )
            if len(self._decided) >= MAX_CACHED:
                self._decided.clear()
            self._decided[(account, repository)] = decided
        return decided


def parse_basic(value: str) -> tuple[str, str]:
    """The (user, password) of a Basic credential; ValueError when it is not one."""
    if len(value) > MAX_HEADER:
        raise ValueError("credentials too long")
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("malformed Basic credentials") from None
    if not sep or not user or user == ANONYMOUS:
        raise ValueError("malformed Basic credentials")
    return user, password


class Logins:
    """Checks passwords against the htpasswd file, remembering good ones for a minute, or
    until the file changes.

    Entries are keyed by the Basic credential as sent (its base64), so the common case, the
    same header again, costs one keyed hash: no decoding, no bcrypt.
    """

    def __init__(self, htpasswd: Htpasswd) -> None:
        self.htpasswd = htpasswd
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[str, float]] = {}  # keyed hash -> (user, until)
        self._pending: dict[bytes, asyncio.Future[bool]] = {}
        self._generation = htpasswd.generation  # of the file the remembered logins were checked with

    async def user_of(self, credentials: str) -> str | None:
        """The user a Basic credential (``base64(user:password)``) proves; None for a wrong
        password, ValueError for something that is not a Basic credential."""
        generation = self.htpasswd.refresh()
        if generation != self._generation:  # a password changed or a user left: check them all again
            self._verified.clear()
            self._generation = generation
        key = hashlib.blake2b(credentials.encode(), key=self._key, digest_size=32).digest()
        known = self._verified.get(key)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        user, password = parse_basic(credentials)
        # Sixteen connections arriving with the same new credentials share one bcrypt.
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= MAX_PENDING_LOGINS:  # a flood of guesses: refuse, do not queue
                raise RegistryError(
                    "TOOMANYREQUESTS", "too many logins at once", headers={"Retry-After": "1"}
                )
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(_BCRYPT, self.htpasswd.verify, user, password)
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        if not await asyncio.shield(pending):
            return None
        if self.htpasswd.generation != generation:
            return user  # checked against a newer file: right now, but not to be remembered
        if len(self._verified) >= MAX_CACHED:
            self._verified.clear()
        self._verified[key] = (user, time.monotonic() + CACHE_SECONDS)
        return user

    async def check(self, user: str, password: str) -> bool:
        """The same check for a user and password that came some other way (an OAuth2 form)."""
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            return await self.user_of(credentials) == user
        except ValueError:
            return False


@dataclass(slots=True)
class Caller:
    account: str  # a user name, or "anonymous"
    claims: Claims | None = None  # token auth: what the caller's token grants
    base_url: Callable[[], str] = str  # where the request came in (for a realm on this server), on demand


class BasicAccess:
    """``htpasswd`` auth: Basic credentials on every request, the ACL decides."""

    def __init__(self, logins: Logins, acl: Acl) -> None:
        self.logins = logins
        self.acl = acl

    async def identify(self, authorization: str | None, base_url: Callable[[], str]) -> Caller:
        if not authorization:
            return Caller(ANONYMOUS)
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise self.challenge("unsupported authorization scheme")
        try:
            user = await self.logins.user_of(value.strip())
        except ValueError as exc:
            raise self.challenge(str(exc)) from None
        if user is None:
            raise self.challenge("invalid username or password")
        return Caller(user)

    def challenge(self, detail: str) -> RegistryError:
        return RegistryError(
            "UNAUTHORIZED", detail, headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        )

    def check_base(self, caller: Caller) -> None:
        # GET /v2/: clients probe it to learn how to log in; as with distribution, it needs one.
        if caller.account == ANONYMOUS:
            raise self.challenge("authentication required")

    def check_catalog(self, caller: Caller) -> None:
        pass  # anyone may ask; the listing shows only what the caller may pull

    def authorize(self, caller: Caller, repository: str, needed: frozenset[str]) -> None:
        if needed <= self.acl.allowed(caller.account, repository):
            return
        if caller.account == ANONYMOUS:
            raise self.challenge("authentication required")
        raise RegistryError("DENIED", f"{caller.account} may not {','.join(sorted(needed))} here")

    def may_pull(self, caller: Caller, repository: str) -> bool:
        return "pull" in self.acl.allowed(caller.account, repository)

    visible_in_catalog = may_pull


class BearerAccess:
    """``token`` auth: a bearer token on every request, from the token server in the challenge.

    ``realm`` is the token server's URL; empty means this server's own ``/auth/token``.
    ``acl`` is given when this server is also the token server: the catalog is then
    filtered by what the token's subject may pull, as with Basic auth.
    """

    def __init__(self, verifier: TokenVerifier, realm: str, service: str, acl: Acl | None) -> None:
        self.verifier = verifier
        self.realm = realm
        self.service = service
        self.acl = acl
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, Claims] = {}

    async def identify(self, authorization: str | None, base_url: Callable[[], str]) -> Caller:
        if not authorization:
            return Caller(ANONYMOUS, None, base_url)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise self.challenge(Caller(ANONYMOUS, None, base_url), None, "a bearer token is required")
        token = token.strip()
        if len(token) > MAX_BEARER:
            raise self.challenge(Caller(ANONYMOUS, None, base_url), None, "token too long", "invalid_token")
        key = hashlib.blake2b(token.encode(), key=self._key, digest_size=32).digest()
        claims = self._verified.get(key)
        if claims is None or claims.expires < time.time():
            try:
                claims = self.verifier.verify(token)
            except TokenError as exc:
                raise self.challenge(
                    Caller(ANONYMOUS, None, base_url), None, str(exc), "invalid_token"
                ) from None
            if len(self._verified) >= MAX_CACHED:
                self._verified.clear()
            self._verified[key] = claims
        return Caller(claims.subject or ANONYMOUS, claims, base_url)

    def challenge(
        self, caller: Caller, scope: str | None, detail: str, error: str | None = None
    ) -> RegistryError:
        realm = self.realm or f"{caller.base_url()}/auth/token"
        parts = [f'realm="{realm}"', f'service="{self.service}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return RegistryError(
            "UNAUTHORIZED", detail, headers={"WWW-Authenticate": "Bearer " + ",".join(parts)}
        )

    def _granted(self, caller: Caller, kind: str, name: str) -> frozenset[str]:
        if caller.claims is None:
            return frozenset()
        actions = caller.claims.grants.get((kind, name), frozenset())
        return ACTIONS | {"*"} if "*" in actions else actions

    def check_base(self, caller: Caller) -> None:
        if caller.claims is None:
            raise self.challenge(caller, None, "authentication required")

    def check_catalog(self, caller: Caller) -> None:
        if "*" not in self._granted(caller, "registry", "catalog"):
            raise self.challenge(caller, "registry:catalog:*", "the token does not grant the catalog")

    def authorize(self, caller: Caller, repository: str, needed: frozenset[str]) -> None:
        if needed <= self._granted(caller, "repository", repository):
            return
        # Ask for pull too when pushing, as distribution does: clients then get one token for both.
        wanted = [a for a in ACTION_ORDER if a in needed or (a == "pull" and "push" in needed)]
        raise self.challenge(
            caller,
            f"repository:{repository}:{','.join(wanted)}",
            "the token does not grant this" if caller.claims else "authentication required",
            "insufficient_scope" if caller.claims else None,
        )

    def may_pull(self, caller: Caller, repository: str) -> bool:
        return "pull" in self._granted(caller, "repository", repository)

    def visible_in_catalog(self, caller: Caller, repository: str) -> bool:
        if self.acl is None:
            return True  # the issuer granted the catalog; it knows its policy, this server does not
        return "pull" in self.acl.allowed(caller.account, repository)


Access = BasicAccess | BearerAccess
