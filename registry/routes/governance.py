"""``/v2/_pier/...``: pier's own API for teams: quota usage, the audit log, retention and
repository delete. JSON, errors in the spec's format, under the same access control."""

from __future__ import annotations

import json
import math

from starlette.requests import Request
from starlette.responses import Response

from ..errors import RegistryError
from ..governance.audit import ACTIONS, Query
from ..governance.policy import namespace_of
from ..governance.service import OVERRIDE
from ..http import empty_response, json_response
from .services import Services

MAX_AUDIT_ENTRIES = 10_000
Row = dict[str, object]


async def usage(services: Services, request: Request) -> Response:
    namespaces, repositories = await usage_report(services, services.caller(request).account)
    return json_response({"namespaces": namespaces, "repositories": repositories})


async def usage_report(
    services: Services, account: str
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Each namespace ``account`` can see something in: bytes used, its quota, its repositories;
    and the per-repository quotas of repositories it may pull (the API's and the UI's page)."""
    governance = services.governance
    await governance.index.ready()
    visible: set[str] = set()
    for name in governance.index.names():
        if namespace_of(name) not in visible and "pull" in services.allowed(account, name):
            visible.add(namespace_of(name))
    limits = {q.scope: q for q in governance.policies.quotas if not q.per_repository}
    namespaces = []
    for namespace, (used, count) in sorted(governance.index.namespaces().items()):
        if namespace not in visible:
            continue
        quota = limits.get(namespace)
        entry: Row = {"namespace": namespace, "used": used, "repositories": count}
        if quota is not None:
            entry["used"] = await governance.quotas.usage(quota)
            entry["limit"] = quota.limit
        namespaces.append(entry)
    per_repository: list[Row] = []
    for quota in governance.policies.quotas:
        if quota.per_repository and "pull" in services.allowed(account, quota.scope):
            used = await governance.quotas.usage(quota)
            per_repository.append({"repository": quota.scope, "used": used, "limit": quota.limit})
    return namespaces, per_repository


def audit_query(request: Request) -> Query:
    params = request.query_params
    action = params.get("action") or None
    if action is not None and action not in ACTIONS:
        raise RegistryError("UNSUPPORTED", f"action must be one of {', '.join(ACTIONS)}", status=400)
    try:
        limit = int(params.get("limit", "1000"))
        since = float(params["since"]) if params.get("since") else None
    except ValueError:
        raise RegistryError("PAGINATION_NUMBER_INVALID", "limit and since are numbers") from None
    if since is not None and not math.isfinite(since):
        raise RegistryError("PAGINATION_NUMBER_INVALID", "since is seconds since the epoch")
    if not 0 < limit <= MAX_AUDIT_ENTRIES:
        raise RegistryError("PAGINATION_NUMBER_INVALID", f"limit is 1 to {MAX_AUDIT_ENTRIES}")
    return Query(
        repository=params.get("repository") or None,
        user=params.get("user") or None,
        action=action,
        since=since,
        limit=limit,
    )


async def audit(services: Services, request: Request) -> Response:
    """``?repository=&user=&action=&since=&limit=``, newest first; ``?format=jsonl`` for JSON lines."""
    entries = await services.governance.audit.query(audit_query(request))
    if request.query_params.get("format") == "jsonl":
        body = "".join(json.dumps(entry) + "\n" for entry in entries).encode()
        return Response(body, media_type="application/jsonl")
    return json_response({"entries": entries})


async def retention(services: Services, request: Request) -> Response:
    """GET: what the rules would delete now (a dry run). POST: delete it, then GC may free the bytes."""
    governance = services.governance
    if not governance.policies.retention:
        raise RegistryError("UNSUPPORTED", "no retention rules are configured", status=404)
    if request.method == "GET":
        planned = await governance.retention_plan()
        return json_response({"dry_run": True, "items": [i.as_dict() for i in planned.items]})
    planned, deleted = await governance.run_retention(services.actor(request))
    return json_response(
        {"dry_run": False, "planned": len(planned.items), "items": [i.as_dict() for i in deleted]}
    )


async def delete_repository(services: Services, request: Request, name: str) -> Response:
    services.check_delete()
    override = request.query_params.get("override") == OVERRIDE
    await services.governance.delete_repository(services.actor(request), name, override)
    await services.notify(request, "delete", name, {})
    return empty_response(202, {})
