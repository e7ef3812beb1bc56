"""The web UI at ``/ui``: server-rendered pages over the catalog index, under the API's access rules.

Who a visitor is comes from the session cookie (``sessions``); what they may see and do from
the same ACL the API applies (``Services.allowed``): a repository they may not pull is not
listed and its pages answer 404, as if it did not exist. Every form that changes something
is a POST carrying the session's CSRF token, from this origin. Templates escape everything
(Jinja2's autoescape) and the Content-Security-Policy allows no inline script or style, so a
hostile tag, label or annotation is text, never code.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from oci.units import human_size

from ..errors import RegistryError
from ..governance.audit import ACTIONS, Query
from ..governance.service import Actor
from ..references import is_digest, validate_name, validate_tag
from ..routes.governance import usage_report
from ..routes.services import Services, base_url
from . import images
from .sessions import COOKIE, LIFETIME, LOGIN_COOKIE, Session, Signer, load_key, same_token

HERE = Path(__file__).parent
PAGE_SIZE = 50
MAX_FORM = 16 * 1024  # bytes of a form's body
MAX_FIELDS = 16
MAX_QUERY = 200
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # Not "no-referrer": under it browsers send "Origin: null" with every form POST, which the
    # origin checks of the forms (login, logout, deletes, retention) must refuse. "same-origin"
    # still sends nothing to other sites.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
SORTS = ("name", "date", "size")


def _ago(seconds: float) -> str:
    if not seconds:
        return "never"
    delta = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return "just now"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds)) if seconds else ""


class WebUI:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.signer = Signer(load_key(services.settings.ui_session_key))
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            auto_reload=False,
        )
        self.templates.filters.update(
            size=human_size,
            ago=_ago,
            when=_when,
            urlpart=lambda s: quote(str(s), safe="/"),
            # JSON shown as text, escaped as any text: Jinja's tojson is for <script> and shows
            # < > & ' as \u003c \u003e \u0026 \u0027 ("sh -c 'a && b'" would be unreadable).
            json=lambda value: json.dumps(value, ensure_ascii=False),
        )
        routes = [
            Route("/ui", self._redirect_home),
            Route("/ui/", self.repositories),
            Route("/ui/login", self.login, methods=["GET", "POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Route("/ui/usage", self.usage),
            Route("/ui/retention", self.retention, methods=["GET", "POST"]),
            Route("/ui/audit", self.audit),
            Route("/ui/audit.jsonl", self.audit_export),
            Route("/ui/r/{name:path}/-/m/{reference}", self.image),
            Route("/ui/r/{name:path}/-/tags/{tag}/delete", self.delete_tag, methods=["POST"]),
            Route("/ui/r/{name:path}/-/delete", self.delete_repository, methods=["POST"]),
            Route("/ui/r/{name:path}", self.repository),
            Mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.app = Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode().lower() not in SECURITY_HEADERS
                ]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                elapsed = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={elapsed:.1f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

    # -- who is asking ------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        """The visitor's session, if valid: signed, unexpired, and its user's password unchanged."""
        session = self.signer.read(request.cookies.get(COOKIE))
        fingerprint = self.services.password_fingerprint(session.user) if session and session.user else None
        if session is not None and session.user and fingerprint != session.password:
            return None  # removed, or the password changed: log in again
        return session

    def account(self, request: Request) -> str:
        session = self.session(request)
        return session.user if session is not None and session.user else "anonymous"

    def may(self, request: Request, action: str, name: str) -> bool:
        return action in self.services.allowed(self.account(request), name)

    def is_admin(self, request: Request) -> bool:
        account = self.account(request)
        if self.services.auth is None:
            return True
        return account != "anonymous" and self.services.is_admin(account)

    def actor(self, request: Request) -> Actor:
        account = self.account(request)
        client = request.client
        return Actor("" if account == "anonymous" else account, client.host if client else "")

    def _check_writable(self, name: str) -> None:
        """What the API checks before a delete: deletes are on, and the repository is not a mirror's."""
        self.services.check_delete()
        mirror = self.services.mirror
        if mirror is not None and mirror.proxied(name) is not None:
            raise RegistryError("DENIED", message=f"{name} is a mirror's copy: it is read-only here")

    def check_form(self, request: Request, form: Any) -> Session:
        """A changing request: from this origin, with the session's CSRF token."""
        origin = request.headers.get("origin")
        if origin is not None and origin != base_url(request):
            raise RegistryError("DENIED", message="cross-origin form")
        session = self.session(request)
        # On an open registry a visitor's session has no user, but still a token.
        if session is None or (not session.user and self.services.auth is not None):
            raise RegistryError("DENIED", message="log in first")
        if not same_token(form.get("csrf"), session.csrf):
            raise RegistryError("DENIED", message="the form has expired: reload the page")
        return session

    async def form(self, request: Request) -> Any:
        """A small urlencoded form, refused before it is read if it is not one: every form here
        is a few short fields, and parsing is the first thing an anonymous POST gets."""
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_FORM:
            raise RegistryError(
                "DENIED", message=f"forms here are at most {MAX_FORM} bytes, with a Content-Length"
            )
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise RegistryError("DENIED", message="forms here are application/x-www-form-urlencoded")
        return await request.form(max_fields=MAX_FIELDS, max_part_size=MAX_FORM)

    def render(self, request: Request, template: str, status: int = 200, **values: Any) -> Response:
        session = self.session(request)
        new_cookie = None
        if session is None and self.services.auth is None:
            new_cookie, session = self.signer.issue("")  # an open registry's forms need a token too
        values.update(
            user="" if session is None else session.user,
            csrf="" if session is None else session.csrf,
            login_needed=self.services.auth is not None,
            is_admin=self.is_admin(request),
        )
        body = self.templates.get_template(template).render(**values)
        response = HTMLResponse(body, status)
        if new_cookie is not None:
            self._set_cookie(request, response, COOKIE, new_cookie, LIFETIME)
        return response

    def _set_cookie(
        self, request: Request, response: Response, name: str, value: str, max_age: float
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(max_age),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https" or (request.client is not None and _loopback(request)),
        )

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.render(request, "error.html", 404, title="Not found", message="There is nothing here.")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return self.render(
            request, "error.html", 405, title="Not allowed", message="That method is not allowed here."
        )

    async def _redirect_home(self, request: Request) -> Response:
        return RedirectResponse("/ui/", 308)

    async def _guard(self, request: Request, page: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await page()
        except RegistryError as error:
            status = error.status if error.status in (400, 403, 404, 405, 409, 429) else 400
            if error.code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_INVALID", "TAG_INVALID"):
                status = 404
            return self.render(request, "error.html", status, title="Refused", message=error.message)

    # -- pages --------------------------------------------------------------------------
    async def repositories(self, request: Request) -> Response:
        index = self.services.governance.index
        await index.ready()
        query = request.query_params.get("q", "")[:MAX_QUERY].strip().lower()
        account = self.account(request)
        allowed = self.services.allowed
        names = [n for n in index.names() if (not query or query in n) and "pull" in allowed(account, n)]
        page, pages = _page(request, len(names))
        rows = [index.get(n) for n in names[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]]
        return self.render(
            request,
            "repositories.html",
            title="Repositories",
            rows=[r for r in rows if r is not None],
            query=query,
            total=len(names),
            page=page,
            pages=pages,
            link=lambda page: "/ui/?" + urlencode({"q": query, "page": page} if query else {"page": page}),
        )

    async def repository(self, request: Request) -> Response:
        async def page() -> Response:
            name = validate_name(request.path_params["name"])
            index = self.services.governance.index
            await index.ready()
            found = index.get(name)
            if found is None or not self.may(request, "pull", name):
                raise RegistryError("NAME_UNKNOWN", name)
            sort = request.query_params.get("sort", "date")
            sort = sort if sort in SORTS else "date"
            descending = request.query_params.get("order", "desc" if sort != "name" else "asc") == "desc"
            tags = list(found.tags.values())
            summaries: dict[Any, Any] = {}
            if sort == "size":
                summaries = await index.summaries(name, [t.digest for t in tags])
                tags.sort(key=lambda t: (summaries[t.digest].size if t.digest in summaries else 0, t.name))
            elif sort == "date":
                tags.sort(key=lambda t: (t.pushed, t.name))
            else:
                tags.sort(key=lambda t: t.name)
            if descending:
                tags.reverse()
            number, pages = _page(request, len(tags))
            shown = tags[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
            summaries = {
                **summaries,
                **await index.summaries(name, [t.digest for t in shown if t.digest not in summaries]),
            }
            totals = await self.services.governance.pulls.totals() if shown else {}
            governance = self.services.governance
            rows = [
                {
                    "tag": t,
                    "summary": summaries.get(t.digest),
                    "mark": governance.mark(name, t.name),
                    "pulls": totals[(name, t.name)].count if (name, t.name) in totals else 0,
                }
                for t in shown
            ]

            def link(**change: Any) -> str:
                params = {"sort": sort, "order": "desc" if descending else "asc", "page": number, **change}
                return f"/ui/r/{quote(name)}?" + urlencode(params)

            return self.render(
                request,
                "repository.html",
                title=name,
                repository=found,
                rows=rows,
                sort=sort,
                descending=descending,
                page=number,
                pages=pages,
                link=link,
                may_delete=self.may(request, "delete", name) and self.services.settings.delete_enabled,
                host=_host(request),
            )

        return await self._guard(request, page)

    async def image(self, request: Request) -> Response:
        async def page() -> Response:
            name = validate_name(request.path_params["name"])
            reference = request.path_params["reference"]
            if not is_digest(reference):
                validate_tag(reference)
            if not self.may(request, "pull", name):
                raise RegistryError("NAME_UNKNOWN", name)
            governance = self.services.governance
            image = await images.load(self.services.store, governance.index, name, reference)
            return self.render(
                request,
                "image.html",
                title=f"{name}:{reference}" if not is_digest(reference) else f"{name}@{reference[:19]}",
                image=image,
                name=name,
                reference=reference,
                host=_host(request),
                mark="" if is_digest(reference) else governance.mark(name, reference),
                model_type=images.MODEL_CONFIG,
            )

        return await self._guard(request, page)

    async def usage(self, request: Request) -> Response:
        rows, repository_quotas = await usage_report(self.services, self.account(request))
        return self.render(
            request, "usage.html", title="Usage and quotas", rows=rows, repository_quotas=repository_quotas
        )

    async def retention(self, request: Request) -> Response:
        async def page() -> Response:
            if not self.is_admin(request):
                return self._login_or_refuse(request, "Retention is for the registry's admins.")
            governance = self.services.governance
            deleted = None
            if request.method == "POST":
                self.check_form(request, await self.form(request))
                if not governance.policies.retention:
                    raise RegistryError("UNSUPPORTED", "no retention rules are configured")
                _, deleted = await governance.run_retention(self.actor(request))
            planned = await governance.retention_plan() if governance.policies.retention else None
            return self.render(
                request,
                "retention.html",
                title="Retention",
                rules=governance.policies.retention,
                plan=planned,
                deleted=deleted,
            )

        return await self._guard(request, page)

    def _audit_query(self, request: Request) -> Query:
        params = request.query_params
        action = params.get("action") or None
        return Query(
            repository=(params.get("repository") or "").strip() or None,
            user=(params.get("user") or "").strip() or None,
            action=action if action in ACTIONS else None,
            limit=200 if request.url.path.endswith("/audit") else 10_000,
        )

    async def audit(self, request: Request) -> Response:
        if not self.is_admin(request):
            return self._login_or_refuse(request, "The audit log is for the registry's admins.")
        query = self._audit_query(request)
        entries = await self.services.governance.audit.query(query)
        export = "/ui/audit.jsonl?" + urlencode(
            {
                k: v
                for k, v in (("repository", query.repository), ("user", query.user), ("action", query.action))
                if v
            }
        )
        return self.render(
            request,
            "audit.html",
            title="Audit log",
            entries=entries,
            query=query,
            actions=ACTIONS,
            export=export,
        )

    async def audit_export(self, request: Request) -> Response:
        if not self.is_admin(request):
            return self._login_or_refuse(request, "The audit log is for the registry's admins.")
        entries = await self.services.governance.audit.query(self._audit_query(request))
        body = "".join(json.dumps(e) + "\n" for e in entries)
        return Response(
            body,
            media_type="application/jsonl",
            headers={"content-disposition": 'attachment; filename="pier-audit.jsonl"'},
        )

    def _login_or_refuse(self, request: Request, message: str) -> Response:
        if self.account(request) == "anonymous":
            return RedirectResponse("/ui/login?" + urlencode({"next": request.url.path}), 303)
        return self.render(request, "error.html", 403, title="Not allowed", message=message)

    # -- changes ------------------------------------------------------------------------
    async def delete_tag(self, request: Request) -> Response:
        async def change() -> Response:
            form = await self.form(request)
            self.check_form(request, form)
            name = validate_name(request.path_params["name"])
            tag = validate_tag(request.path_params["tag"])
            if not self.may(request, "delete", name):
                raise RegistryError("DENIED", message="you may not delete in this repository")
            self._check_writable(name)
            override = form.get("override") == "immutable"
            await self.services.governance.delete_tag(self.actor(request), name, tag, override)
            await self.services.notify(request, "delete", name, {"tag": tag})
            return RedirectResponse(f"/ui/r/{quote(name)}", 303)

        return await self._guard(request, change)

    async def delete_repository(self, request: Request) -> Response:
        async def change() -> Response:
            form = await self.form(request)
            self.check_form(request, form)
            name = validate_name(request.path_params["name"])
            if not self.may(request, "delete", name):
                raise RegistryError("DENIED", message="you may not delete this repository")
            self._check_writable(name)
            if form.get("confirm") != name:
                raise RegistryError("DENIED", message="type the repository's name to confirm")
            override = form.get("override") == "immutable"
            await self.services.governance.delete_repository(self.actor(request), name, override)
            await self.services.notify(request, "delete", name, {})
            return RedirectResponse("/ui/", 303)

        return await self._guard(request, change)

    # -- logging in ---------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        if self.services.auth is None:
            return RedirectResponse("/ui/", 303)
        target = request.query_params.get("next", "/ui/")
        target = target if target.startswith("/ui/") and "//" not in target and "\\" not in target else "/ui/"
        if request.method == "GET":
            cookie, pending = self.signer.issue("", lifetime=1800)
            response = self.render(
                request, "login.html", title="Log in", login_csrf=pending.csrf, next=target, error=""
            )
            self._set_cookie(request, response, LOGIN_COOKIE, cookie, 1800)
            return response
        return await self._guard(request, lambda: self._log_in(request, target))

    async def _log_in(self, request: Request, target: str) -> Response:
        form = await self.form(request)
        pending_session = self.signer.read(request.cookies.get(LOGIN_COOKIE))
        origin = request.headers.get("origin")
        if (
            pending_session is None
            or not same_token(form.get("csrf"), pending_session.csrf)
            or (origin is not None and origin != base_url(request))
        ):
            return self.render(
                request, "error.html", 403, title="Refused", message="The login form expired: reload it."
            )
        user, password = str(form.get("username", ""))[:256], str(form.get("password", ""))[:1024]
        if not user or not await self.services.login(user, password):
            actor = self.actor(request)
            await self.services.governance.login_failed(user, actor.addr, "web UI")
            cookie, pending = self.signer.issue("", lifetime=1800)
            response = self.render(
                request,
                "login.html",
                401,
                title="Log in",
                login_csrf=pending.csrf,
                next=target,
                error="Wrong user name or password.",
            )
            self._set_cookie(request, response, LOGIN_COOKIE, cookie, 1800)
            return response
        cookie, _ = self.signer.issue(user, password=self.services.password_fingerprint(user) or "")
        response = RedirectResponse(target, 303)
        self._set_cookie(request, response, COOKIE, cookie, LIFETIME)
        response.delete_cookie(LOGIN_COOKIE, path="/ui")
        return response

    async def logout(self, request: Request) -> Response:
        async def change() -> Response:
            self.check_form(request, await self.form(request))
            response = RedirectResponse("/ui/", 303)
            response.delete_cookie(COOKIE, path="/ui")
            return response

        return await self._guard(request, change)


def _loopback(request: Request) -> bool:
    host = request.url.hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _host(request: Request) -> str:
    """This registry as clients name it in a reference: the Host the browser used."""
    return base_url(request).split("://", 1)[1]


def _page(request: Request, count: int) -> tuple[int, int]:
    pages = max(1, math.ceil(count / PAGE_SIZE))
    try:
        page = int(request.query_params.get("page", "1"))
    except ValueError:
        page = 1
    return min(max(page, 1), pages), pages
