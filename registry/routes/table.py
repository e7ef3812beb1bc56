"""The one table of what the registry serves: each path template, its methods, their handlers and the
action each needs. The router, the permission check, the metrics labels and the endpoint list in
the docs (``python -m registry.routes``) are all read from it, so none can drift from another.

Actions: ``pull``, ``push`` and ``delete`` on the repository in the path; ``catalog`` (anyone may
ask, the listing shows only what the caller may pull); ``base`` (any authenticated caller: the
``/v2/`` probe, quota usage); ``admin`` (the ``admins`` setting's users: the audit log,
retention); ``token`` (the token server checks its own credentials); ``operations`` (health,
readiness and metrics: never authenticated, never limited). A method missing from a route is 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.responses import Response

from . import base, blobs, catalog, governance, health, manifests, referrers, tags, token, uploads

Action = Literal["pull", "push", "delete", "catalog", "base", "admin", "token", "operations"]
ACTIONS: frozenset[str] = frozenset(Action.__args__)  # type: ignore[attr-defined]  # Literal's members
REPOSITORY_ACTIONS = frozenset({"pull", "push", "delete"})
Handler = Callable[..., Awaitable[Response]]  # (services, request, **the template's parameters)
NAME_PREFIX = "/v2/{name}/"


@dataclass(frozen=True)
class Endpoint:
    handler: Handler
    action: Action


@dataclass(frozen=True)
class Route:
    template: str  # also the metrics and access-log label
    methods: Mapping[str, Endpoint]
    summary: str
    needs: str = ""  # served only when this is on: "metrics", "token_server"; "" always
    allow: str = field(init=False)  # the Allow header of a 405

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", ", ".join(self.methods))

    @property
    def repository(self) -> bool:
        """The path names a repository: ``{name}`` is validated, and the action applies to it."""
        return self.template.startswith(NAME_PREFIX)


def _both(handler: Handler, action: Action) -> dict[str, Endpoint]:
    return {"GET": Endpoint(handler, action), "HEAD": Endpoint(handler, action)}


ROUTES: tuple[Route, ...] = (
    Route("/v2/", _both(base.base, "base"), "API version check; 401 tells a client how to log in"),
    Route("/v2/_catalog", {"GET": Endpoint(catalog.catalog, "catalog")}, "repositories, paginated"),
    Route(
        "/v2/{name}/tags/list", {"GET": Endpoint(tags.list_tags, "pull")}, "a repository's tags, paginated"
    ),
    Route(
        "/v2/{name}/manifests/{reference}",
        {
            **_both(manifests.get_manifest, "pull"),
            "PUT": Endpoint(manifests.put_manifest, "push"),
            "DELETE": Endpoint(manifests.delete_manifest, "delete"),
        },
        "a manifest by tag or digest",
    ),
    Route(
        "/v2/{name}/blobs/uploads/",
        {"POST": Endpoint(uploads.start_upload, "push")},
        "start an upload, upload in one request (?digest=) or mount (?mount=&from=)",
    ),
    Route(
        "/v2/{name}/blobs/uploads/{uuid}",
        {
            "GET": Endpoint(uploads.upload_status, "push"),
            "PATCH": Endpoint(uploads.patch_upload, "push"),
            "PUT": Endpoint(uploads.finish_upload, "push"),
            "DELETE": Endpoint(uploads.cancel_upload, "push"),
        },
        "an upload session: its progress, a chunk, the last chunk, or cancel",
    ),
    Route(
        "/v2/{name}/blobs/{digest}",
        {**_both(blobs.get_blob, "pull"), "DELETE": Endpoint(blobs.delete_blob, "delete")},
        "a blob (Range requests served)",
    ),
    Route(
        "/v2/{name}/referrers/{digest}",
        {"GET": Endpoint(referrers.list_referrers, "pull")},
        "manifests whose subject is the digest (?artifactType=)",
    ),
    Route(
        "/v2/{name}/_pier/repository",
        {"DELETE": Endpoint(governance.delete_repository, "delete")},
        "delete a repository: all its tags and manifests (GC then frees the blobs)",
    ),
    Route(
        "/v2/_pier/usage",
        {"GET": Endpoint(governance.usage, "base")},
        "storage used and quotas, per namespace",
    ),
    Route(
        "/v2/_pier/audit",
        {"GET": Endpoint(governance.audit, "admin")},
        "the audit log (?repository=&user=&action=&since=&limit=&format=jsonl)",
    ),
    Route(
        "/v2/_pier/retention",
        {"GET": Endpoint(governance.retention, "admin"), "POST": Endpoint(governance.retention, "admin")},
        "retention: GET lists what the rules would delete (dry run), POST deletes it",
    ),
    Route(
        "/auth/token",
        {"GET": Endpoint(token.issue_token, "token"), "POST": Endpoint(token.issue_token, "token")},
        "bearer tokens (Docker's GET flow and OAuth2's POST)",
        needs="token_server",
    ),
    Route("/healthz", {"GET": Endpoint(health.healthz, "operations")}, "liveness"),
    Route("/readyz", {"GET": Endpoint(health.readyz, "operations")}, "readiness"),
    Route(
        "/metrics",
        {"GET": Endpoint(health.serve_metrics, "operations")},
        "Prometheus metrics",
        needs="metrics",
    ),
)


@dataclass(frozen=True)
class _Pattern:
    """A ``/v2/{name}/...`` template as the segments after the name, matched from the path's end."""

    route: Route
    segments: tuple[str, ...]  # fixed text, or "" for a parameter
    parameters: tuple[str, ...]  # the parameters' names, in order
    trailing_slash: bool  # the template ends in "/": the path may or may not
    marker: str  # "/" and its first fixed segment: a path without it cannot match

    @classmethod
    def of(cls, route: Route) -> _Pattern:
        rest = route.template[len(NAME_PREFIX) :]
        trailing = rest.endswith("/")
        parts = rest.rstrip("/").split("/")
        segments = tuple("" if p.startswith("{") else p for p in parts)
        parameters = tuple(p[1:-1] for p in parts if p.startswith("{"))
        return cls(route, segments, parameters, trailing, f"/{next(s for s in segments if s)}")

    def match(self, path: str) -> dict[str, str] | None:
        if self.marker not in path:
            return None
        if self.trailing_slash and path.endswith("/"):
            path = path[:-1]
        head, *tail = path.rsplit("/", len(self.segments))
        if len(tail) != len(self.segments) or len(head) <= 4 or not head.startswith("/v2/"):
            return None
        params = {}
        names = iter(self.parameters)
        for fixed, part in zip(self.segments, tail, strict=True):
            if fixed:
                if part != fixed:
                    return None
            elif part:
                params[next(names)] = part
            else:
                return None
        name = head[4:]
        if "\n" in name:  # what the regular expressions this replaces answered: no such endpoint
            return None
        params["name"] = name
        return params


class Router:
    """Fixed paths by one dictionary lookup; ``/v2/{name}/...`` by the segments at the path's end,
    tried in the table's order (``.../blobs/uploads`` is an upload, not a blob called "uploads")."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._fixed: dict[str, Route] = {}
        self._patterns: list[_Pattern] = []
        for route in self.routes:
            if route.repository:
                self._patterns.append(_Pattern.of(route))
            else:
                self._fixed[route.template] = route
                if route.template.endswith("/"):
                    self._fixed[route.template[:-1]] = route
        self._no_params: dict[str, Any] = {}

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        route = self._fixed.get(path)
        if route is not None:
            return route, self._no_params
        if path.startswith("/v2/"):
            for pattern in self._patterns:
                params = pattern.match(path)
                if params is not None:
                    return pattern.route, params
        return None


def served(features: Iterable[str], api: bool = True) -> list[Route]:
    """The routes a server with these features on serves (``api``: False for a token server only)."""
    on = set(features)
    return [
        route
        for route in ROUTES
        if (not route.needs or route.needs in on) and (api or not route.template.startswith("/v2"))
    ]


def describe(routes: Iterable[Route] = ROUTES) -> str:
    """The endpoint list for the docs, as a Markdown table."""
    lines = ["| Method | Path | Needs | What |", "|---|---|---|---|"]
    for route in routes:
        for method, endpoint in route.methods.items():
            when = f" (with {route.needs.replace('_', ' ')})" if route.needs else ""
            lines.append(f"| {method} | `{route.template}` | {endpoint.action} | {route.summary}{when} |")
    return "\n".join(lines)
