"""The governance settings (``quotas``, ``retention``, ``immutable_tags``, ``admins``), read once.

Like webhooks, quotas and retention rules are tables in the config file (``[[quotas]]``,
``[[retention]]``) or a JSON list in ``PIER_QUOTAS``/``PIER_RETENTION``; a wrong key or value
refuses the whole setting at startup, never a surprise at the first push.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..setting_kinds import ConfigError, parse_duration, parse_size

T = TypeVar("T")


def namespace_of(repository: str) -> str:
    """The first path component: ``team-a/app/web`` is in ``team-a``; ``busybox`` is its own."""
    return repository.split("/", 1)[0]


@dataclass(frozen=True)
class Quota:
    """At most ``limit`` bytes of distinct blobs in a namespace, or in one repository."""

    scope: str  # a namespace name, or a repository name when ``per_repository``
    limit: int
    per_repository: bool = False

    @property
    def label(self) -> str:
        return f"{'repository' if self.per_repository else 'namespace'} {self.scope}"


@dataclass(frozen=True)
class RetentionRule:
    """Which tags and untagged manifests of the repositories matching ``repositories`` may go.

    A governed tag (matching ``tags``) is kept when it is protected, immutable, among the
    ``keep_last`` most recently pushed, or pushed or pulled within ``keep_pulled_within``;
    otherwise it goes, provided the rule says how many or how recent to keep at all.
    """

    repositories: str = "*"
    tags: str = "*"
    keep_last: int | None = None
    keep_pulled_within: float | None = None  # seconds
    untagged_after: float | None = None  # seconds
    protect: tuple[str, ...] = ()

    def applies(self, repository: str) -> bool:
        return fnmatch.fnmatchcase(repository, self.repositories)

    def protects(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.protect)

    @property
    def prunes_tags(self) -> bool:
        return self.keep_last is not None or self.keep_pulled_within is not None


@dataclass(frozen=True)
class ImmutableRule:
    repositories: str  # glob
    tags: str  # glob

    def covers(self, repository: str, tag: str) -> bool:
        return fnmatch.fnmatchcase(tag, self.tags) and fnmatch.fnmatchcase(repository, self.repositories)


@dataclass(frozen=True)
class Policies:
    quotas: tuple[Quota, ...] = ()
    retention: tuple[RetentionRule, ...] = ()
    immutable: tuple[ImmutableRule, ...] = ()
    admins: frozenset[str] = frozenset()

    def quotas_for(self, repository: str) -> list[Quota]:
        """The namespace's quota and the repository's own, where configured."""
        namespace = namespace_of(repository)
        return [
            q
            for q in self.quotas
            if (q.per_repository and q.scope == repository) or (not q.per_repository and q.scope == namespace)
        ]

    def immutable_rule(self, repository: str, tag: str) -> ImmutableRule | None:
        return next((rule for rule in self.immutable if rule.covers(repository, tag)), None)

    def retention_rule(self, repository: str) -> RetentionRule | None:
        """The first rule whose pattern matches: more specific rules go first in the config."""
        return next((rule for rule in self.retention if rule.applies(repository)), None)


def _entries(text: str, setting: str) -> list[dict[str, Any]]:
    if not text.strip():
        return []
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{setting}: not JSON: {exc}") from None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{setting}: expected a list of tables")
    return entries


def _checked(parse: Callable[[object], T], value: object, where: str) -> T:
    try:
        return parse(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_keys(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(allowed))})")


def parse_quotas(text: str) -> tuple[Quota, ...]:
    quotas = []
    for i, entry in enumerate(_entries(text, "quotas")):
        where = f"quotas[{i}]"
        _check_keys(entry, {"namespace", "repository", "limit"}, where)
        if ("namespace" in entry) == ("repository" in entry):
            raise ConfigError(f"{where}: give a namespace or a repository, not both")
        if "limit" not in entry:
            raise ConfigError(f'{where}: needs a limit (e.g. "10GiB")')
        scope = str(entry.get("namespace") or entry.get("repository"))
        if "namespace" in entry and "/" in scope:
            raise ConfigError(f"{where}: a namespace is one path component, not {scope!r}")
        limit = _checked(parse_size, entry["limit"], f"{where}.limit")
        if limit <= 0:
            raise ConfigError(f"{where}: the limit must be positive")
        quotas.append(Quota(scope, limit, per_repository="repository" in entry))
    if len({(q.scope, q.per_repository) for q in quotas}) != len(quotas):
        raise ConfigError("quotas: one quota per namespace or repository")
    return tuple(quotas)


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a pattern or a list of patterns")


def parse_retention(text: str) -> tuple[RetentionRule, ...]:
    rules = []
    allowed = {"repositories", "tags", "keep_last", "keep_pulled_within", "untagged_after", "protect"}
    for i, entry in enumerate(_entries(text, "retention")):
        where = f"retention[{i}]"
        _check_keys(entry, allowed, where)
        keep_last = entry.get("keep_last")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 0):
            raise ConfigError(f"{where}.keep_last: a count of tags (0 or more)")
        within, untagged = entry.get("keep_pulled_within"), entry.get("untagged_after")
        if within is not None:
            within = _checked(parse_duration, within, f"{where}.keep_pulled_within")
        if untagged is not None:
            untagged = _checked(parse_duration, untagged, f"{where}.untagged_after")
        rule = RetentionRule(
            repositories=str(entry.get("repositories", "*")),
            tags=str(entry.get("tags", "*")),
            keep_last=keep_last,
            keep_pulled_within=within,
            untagged_after=untagged,
            protect=_patterns(entry.get("protect", []), f"{where}.protect"),
        )
        if not rule.prunes_tags and rule.untagged_after is None:
            raise ConfigError(
                f"{where}: says nothing to delete: give keep_last, keep_pulled_within or untagged_after"
            )
        rules.append(rule)
    return tuple(rules)


def parse_immutable(text: str) -> tuple[ImmutableRule, ...]:
    """``TAG`` globs for every repository, or ``REPOSITORY:TAG`` globs (``team-a/*:v*``)."""
    rules = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        repositories, _, tags = item.rpartition(":")
        if not tags:
            raise ConfigError(f"immutable_tags: {item!r} names no tag pattern")
        rules.append(ImmutableRule(repositories or "*", tags))
    return tuple(rules)


def parse_policies(quotas: str, retention: str, immutable: str, admins: str) -> Policies:
    return Policies(
        quotas=parse_quotas(quotas),
        retention=parse_retention(retention),
        immutable=parse_immutable(immutable),
        admins=frozenset(a.strip() for a in admins.split(",") if a.strip()),
    )
