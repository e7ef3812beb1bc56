"""``n`` and ``last``: the pagination the catalog and tag lists share (with a ``Link`` to the next page)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request

from ..errors import RegistryError
from ..http import is_decimal


def page_size(request: Request, default: int | None) -> int | None:
    """``n`` as asked, capped at ``default`` when there is one; None: no limit."""
    value = request.query_params.get("n")
    if value is None or value == "":
        return default
    if not is_decimal(value):
        raise RegistryError("PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer: {value[:40]!r}")
    return min(int(value), default) if default else int(value)


def paginate(
    items: list[str], request: Request, n: int | None, path: str
) -> tuple[list[str], dict[str, str]]:
    last = request.query_params.get("last")
    if last:
        items = [item for item in items if item > last]
    headers: dict[str, str] = {}
    if n is not None and len(items) > n:
        items = items[:n]
        if items:
            query = urlencode({"n": n, "last": items[-1]})
            headers["Link"] = f'<{path}?{query}>; rel="next"'
    return items, headers
