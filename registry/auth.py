"""Who may do what: Basic authentication against an htpasswd file, and an ordered ACL.

Every request is checked before its handler runs, with the same answers whether or not the
repository exists: 401 ``UNAUTHORIZED`` (with a ``WWW-Authenticate`` challenge) when the
caller has not proven who they are and would need to, 403 ``DENIED`` when they have and may
not. The htpasswd file is the one ``htpasswd -B`` writes; only bcrypt entries are accepted,
checked at the cost they were written with. bcrypt is slow on purpose, so a verified
(user, password) pair is remembered for a minute under an HMAC with a per-process key:
the password itself is never kept, logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import logging
import os
import secrets
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from .errors import RegistryError

log = logging.getLogger("pier.auth")

ANONYMOUS = "anonymous"
ACTIONS = frozenset({"pull", "push", "delete"})
REALM = "pier"
CACHE_SECONDS = 60.0
MAX_CACHED = 4096
MAX_HEADER = 4096
# A real bcrypt hash for users who do not exist, so both paths cost the same time.
_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))


class AuthConfigError(ValueError):
    pass


class Htpasswd:
    """``user:$2y$...`` lines; re-read when the file changes, so users can be added live."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, bytes] = {}
        self._load()

    def _load(self) -> None:
        info = self.path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        users = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise AuthConfigError(f"{self.path}:{number}: expected user:hash")
            if not hashed.startswith(("$2y$", "$2b$", "$2a$")):
                raise AuthConfigError(f"{self.path}:{number}: only bcrypt entries are accepted (htpasswd -B)")
            users[user] = hashed.encode()
        self._users, self._stamp = users, stamp

    def verify(self, user: str, password: str) -> bool:
        try:
            self._load()
        except (OSError, AuthConfigError) as exc:
            log.error("htpasswd file unusable, keeping the last good copy: %s", exc)
        hashed = self._users.get(user)
        matched = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH)
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
        pattern = self.repository.replace("${account}", account)
        return self.actions if fnmatch.fnmatchcase(repository, pattern) else None


@dataclass
class Acl:
    """Ordered rules: the first rule matching the caller and the repository decides."""

    rules: list[Rule] = field(default_factory=list)

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
        for rule in self.rules:
            granted = rule.grants(account, repository)
            if granted is not None:
                return granted
        return frozenset()


class Authenticator:
    def __init__(self, htpasswd: Htpasswd, acl: Acl) -> None:
        self.htpasswd = htpasswd
        self.acl = acl
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}

    def account(self, authorization: str | None) -> str:
        """The caller's account from a Basic header; ``anonymous`` without one."""
        if not authorization:
            return ANONYMOUS
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic" or len(value) > MAX_HEADER:
            raise self.challenge("unsupported authorization scheme")
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise self.challenge("malformed Basic credentials") from None
        if not sep or not user or user == ANONYMOUS:
            raise self.challenge("malformed Basic credentials")
        key = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        if self._verified.get(key, 0.0) > now:
            return user
        if not self.htpasswd.verify(user, password):
            raise self.challenge("invalid username or password")
        if len(self._verified) >= MAX_CACHED:
            self._verified.clear()
        self._verified[key] = now + CACHE_SECONDS
        return user

    def challenge(self, detail: str) -> RegistryError:
        return RegistryError(
            "UNAUTHORIZED", detail, headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        )

    def authorize(self, account: str, repository: str | None, needed: frozenset[str]) -> None:
        """Raise unless ``account`` may do ``needed`` on ``repository`` (None: the registry itself)."""
        if repository is None:  # GET /v2/: clients probe it to learn how to log in, as with distribution
            if account == ANONYMOUS:
                raise self.challenge("authentication required")
            return
        if needed <= self.acl.allowed(account, repository):
            return
        if account == ANONYMOUS:
            raise self.challenge("authentication required")
        raise RegistryError("DENIED", f"{account} may not {','.join(sorted(needed))} here")


def build(htpasswd: str, acl: str) -> Authenticator | None:
    """The authenticator the settings ask for; None when the registry is open (the default)."""
    if not htpasswd:
        if acl:
            raise AuthConfigError("acl needs htpasswd: without users there is nobody to grant to")
        return None
    if not os.path.isfile(htpasswd):
        raise AuthConfigError(f"htpasswd file {htpasswd} does not exist")
    return Authenticator(Htpasswd(htpasswd), Acl.load(acl) if acl else Acl.default())
