"""The UI as an ASGI app (Starlette): read-only pages, four actions, the token check, and mounting under ``serve``.

Routes (``P`` is the prefix: ``""`` for ``featurelake ui``, ``/ui`` under ``featurelake serve``)::

    GET  P/                                   overview
    GET  P/views/{view}[?snapshot=ID&limit=N] a view (time-travel preview at ID)
    GET  P/views/{view}/runs/{run}            a run: verdicts, branch state, the commands
    GET  P/views/{view}/runs/{run}/report     the run's HTML audit report (sandboxed)
    GET  P/models, P/models/{name}, P/models/{name}/{version}
    GET  P/online                             online store and alert rules
    POST P/views/{view}/runs/{run}/publish | /discard, P/models/{name}/{version}/promote, P/online/{view}/sync
    GET|POST P/login                          the token form (only when server.token is set)

Access: with ``server.token`` set every page needs it, as ``Authorization: Bearer <token>`` or the session
cookie the login form sets (an HMAC of the token, never the token); without one, pages are open and the
actions are allowed to loopback clients only. Actions also need the page's form key (CSRF) and call the same
code as the CLI (``api`` facade), so they are recorded where the CLI's are (registry history, snapshot lineage,
audit log, job metrics). Errors are HTML pages: an unknown view, run, snapshot or model is a 404 naming it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from featurelake.errors import (
    AuditFailed,
    CatalogUnavailableError,
    ConflictError,
    FeaturelakeError,
    NotFoundError,
    OnlineStoreUnavailableError,
    UsageError,
)
from featurelake.ui import data, pages
from featurelake.ui.html import error_page
from featurelake.ui.routes import run_href, version_href

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from featurelake.api import Featurelake

log = logging.getLogger("featurelake.ui")

COOKIE = "featurelake_ui"
T = TypeVar("T")

#: Pages load their own script and stylesheet only; the audit report is framed from the same origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)
#: The audit report: inline styles and SVG, nothing else (it runs no script).
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
LOOPBACK = {"127.0.0.1", "::1"}


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error, decided in one place."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError | AuditFailed):
        return 409
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, CatalogUnavailableError | OnlineStoreUnavailableError):
        return 503
    return 500


def _static() -> dict[str, tuple[bytes, str]]:
    files = resources.files("featurelake.ui") / "static"
    types = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}
    return {
        name: ((files / name).read_bytes(), types[name.rsplit(".", 1)[1]]) for name in ("ui.css", "ui.js")
    }


class UI:
    """The pages of one project; one request at a time reads the catalog (the UI is not a hot path)."""

    def __init__(self, fl: Featurelake, *, prefix: str = "", token: str | None = None) -> None:
        from featurelake.serving import open_store

        self.fl = fl
        self.prefix = prefix.rstrip("/")
        self.token = token.encode() if token else None
        self.lock = threading.Lock()
        self.store = open_store(fl.project.config)
        self.assets = _static()
        self.asset = hashlib.sha256(b"".join(b for b, _ in self.assets.values())).hexdigest()[:10]
        secret = self.token or secrets.token_bytes(32)
        self.session = hmac.new(secret, b"featurelake-ui-session", hashlib.sha256).hexdigest()
        self.csrf = hmac.new(secret, b"featurelake-ui-form", hashlib.sha256).hexdigest()
        self.commit_base = data.commit_base(fl.project.root)
        root = fl.project.root
        self.hidden = sorted({str(root), str(Path(root).resolve())}, key=len, reverse=True)

    def close(self) -> None:
        self.store.close()

    # --- access -----------------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session.encode())

    def can_act(self, request: Request) -> bool:
        """Actions: anyone holding the token; without a token, loopback clients only."""
        if self.token is not None:
            return self.authorized(request)
        return request.client is not None and request.client.host in LOOPBACK

    def context(self, request: Request) -> pages.Context:
        return pages.Context(
            self.prefix,
            self.fl.project.config.settings.project,
            self.csrf,
            self.can_act(request),
            self.commit_base,
            self.asset,
            notice=request.query_params.get("done"),
        )

    # --- responses ----------------------------------------------------------------------------------------
    def html(self, body: str, status: int = 200, csp: str = CSP) -> HTMLResponse:
        return HTMLResponse(
            body,
            status_code=status,
            headers={
                "content-security-policy": csp,
                "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer",
                "cache-control": "no-store",
            },
        )

    def error(self, exc: BaseException) -> HTMLResponse:
        status = status_of(exc)
        if status == 500:
            log.exception("UI page failed", exc_info=exc)
        title = {404: "Not found", 409: "Conflict", 400: "Bad request", 503: "Unavailable"}.get(
            status, "Error"
        )
        message = (
            str(exc) if isinstance(exc, FeaturelakeError) else f"{type(exc).__name__}: see the server log"
        )
        for path in self.hidden:  # no local path of the server in a page (as the feature server's errors)
            message = message.replace(path, "<server path>")
        return self.html(error_page(self.prefix, status, title, message, asset=self.asset), status)

    async def read(self, request: Request, fn: Callable[[], str]) -> Response:
        if not self.authorized(request):
            return self.refuse(request)
        try:
            return self.html(await run_in_threadpool(self._locked, fn))
        except Exception as exc:
            return self.error(exc)

    def _locked(self, fn: Callable[[], T]) -> T:
        with self.lock:
            return fn()

    def refuse(self, request: Request) -> HTMLResponse:
        response = self.html(pages.login(self.prefix, self.asset, "missing or wrong token"), 401)
        response.headers["www-authenticate"] = "Bearer"
        return response

    # --- pages --------------------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        def render() -> str:
            ctx = self.context(request)
            return pages.overview(
                ctx,
                data.view_summaries(self.fl, self.store),
                data.alert_rules(self.fl),
                data.recent_jobs(self.fl),
            )

        return await self.read(request, render)

    async def view(self, request: Request) -> Response:
        name = request.path_params["view"]

        def render() -> str:
            limit = _int(request.query_params.get("limit"), "limit") or data.TIMELINE
            snapshot = _int(request.query_params.get("snapshot"), "snapshot")
            detail = data.view_detail(self.fl, self.store, name, limit=max(1, limit), snapshot=snapshot)
            return pages.view(self.context(request), detail, limit)

        return await self.read(request, render)

    async def run(self, request: Request) -> Response:
        view, run = request.path_params["view"], request.path_params["run"]
        return await self.read(
            request, lambda: pages.run(self.context(request), data.run_detail(self.fl, view, run))
        )

    async def report(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.refuse(request)
        view, run = request.path_params["view"], request.path_params["run"]
        try:
            path = await run_in_threadpool(self._locked, lambda: data.report_file(self.fl, view, run))
            return self.html(path.read_text(), csp=REPORT_CSP)
        except Exception as exc:
            return self.error(exc)

    async def models(self, request: Request) -> Response:
        return await self.read(request, lambda: pages.models(self.context(request), data.models(self.fl)))

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self.read(
            request, lambda: pages.model(self.context(request), data.model_detail(self.fl, name))
        )

    async def version(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]

        def render() -> str:
            mv, record, graph = data.version_detail(self.fl, name, version, self.prefix)
            return pages.version(self.context(request), mv, record, graph)

        return await self.read(request, render)

    async def online(self, request: Request) -> Response:
        def render() -> str:
            views = [
                (n, data.online_state(self.fl, self.store, n)) for n in sorted(self.fl.definitions.views)
            ]
            where = f"{self.store.type_name} ({self.fl.project.config.settings.online_store.type})"
            return pages.online(
                self.context(request), views, where, data.alert_rules(self.fl), data.alert_history(self.fl)
            )

        return await self.read(request, render)

    async def static(self, request: Request) -> Response:
        found = self.assets.get(request.path_params["name"])
        if found is None:
            return self.error(NotFoundError(f"no static file {request.path_params['name']!r}"))
        body, media = found
        return Response(body, media_type=media, headers={"cache-control": "public, max-age=86400"})

    # --- actions ------------------------------------------------------------------------------------------
    async def act(self, request: Request, fn: Callable[[dict[str, str]], tuple[str, str]]) -> Response:
        """Run an action (``fn(form) -> (page to return to, what happened)``) after the access checks."""
        if not self.authorized(request):
            return self.refuse(request)
        if not self.can_act(request):
            return self.html(
                error_page(
                    self.prefix, 403, "Forbidden",
                    "actions need server.token (set it in featurelake.yaml or FEATURELAKE_SERVER__TOKEN) or a "
                    "client on loopback; pages stay readable",
                    asset=self.asset,
                ),
                403,
            )  # fmt: skip
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("csrf", "").encode(), self.csrf.encode()):
            return self.html(
                error_page(
                    self.prefix,
                    403,
                    "Forbidden",
                    "the form is stale or foreign: reload the page and try again",
                    asset=self.asset,
                ),
                403,
            )
        try:
            back, done = await run_in_threadpool(self._locked, lambda: fn(form))
        except Exception as exc:
            return self.error(exc)
        log.info("ui action: %s", done)
        return RedirectResponse(f"{back}?{urlencode({'done': done})}", status_code=303)

    async def publish(self, request: Request) -> Response:
        view, run = request.path_params["view"], request.path_params["run"]

        def go(form: dict[str, str]) -> tuple[str, str]:
            data.known_view(self.fl, view)
            result = self.fl.publish(view, run)
            return run_href(
                self.prefix, view, run
            ), f"published run {run}: main of {result.table} -> {result.snapshot_id}"

        return await self.act(request, go)

    async def discard(self, request: Request) -> Response:
        view, run = request.path_params["view"], request.path_params["run"]

        def go(form: dict[str, str]) -> tuple[str, str]:
            data.known_view(self.fl, view)
            tip = self.fl.discard(view, run)
            return run_href(self.prefix, view, run), f"removed branch audit_{run} (tip {tip})"

        return await self.act(request, go)

    async def promote(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]

        def go(form: dict[str, str]) -> tuple[str, str]:
            from featurelake.registry.records import Stage

            stage = Stage.parse(form.get("stage", ""))
            result = self.fl.models.promote(name, version, stage, reason=form.get("reason", ""))
            archived = f"; archived {', '.join(result.archived)}" if result.archived else ""
            back = version_href(self.prefix, name, result.version.version)
            return back, f"{name} {result.version.version} is now {result.version.stage.value}{archived}"

        return await self.act(request, go)

    async def sync(self, request: Request) -> Response:
        view = request.path_params["view"]

        def go(form: dict[str, str]) -> tuple[str, str]:
            data.known_view(self.fl, view)
            (result,) = self.fl.sync(view)
            return f"{self.prefix}/online", result.summary()

        return await self.act(request, go)

    async def login(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse(self.prefix or "/", status_code=303)
        if request.method == "GET":
            return self.html(pages.login(self.prefix, self.asset))
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0].encode()
        if not hmac.compare_digest(given, self.token):
            return self.html(pages.login(self.prefix, self.asset, "wrong token"), 401)
        response = RedirectResponse(self.prefix or "/", status_code=303)
        response.set_cookie(COOKIE, self.session, httponly=True, samesite="strict", path=self.prefix or "/")
        return response

    def routes(self) -> list[Route]:
        p = self.prefix
        return [
            Route(p or "/", self.overview),
            *([Route(f"{p}/", self.overview)] if p else []),
            Route(f"{p}/static/{{name}}", self.static),
            Route(f"{p}/login", self.login, methods=["GET", "POST"]),
            Route(f"{p}/views/{{view}}", self.view),
            Route(f"{p}/views/{{view}}/runs/{{run}}", self.run),
            Route(f"{p}/views/{{view}}/runs/{{run}}/report", self.report),
            Route(f"{p}/views/{{view}}/runs/{{run}}/publish", self.publish, methods=["POST"]),
            Route(f"{p}/views/{{view}}/runs/{{run}}/discard", self.discard, methods=["POST"]),
            Route(f"{p}/models", self.models),
            Route(f"{p}/models/{{name}}", self.model),
            Route(f"{p}/models/{{name}}/{{version}}", self.version),
            Route(f"{p}/models/{{name}}/{{version}}/promote", self.promote, methods=["POST"]),
            Route(f"{p}/online", self.online),
            Route(f"{p}/online/{{view}}/sync", self.sync, methods=["POST"]),
        ]

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if not self.authorized(request):
            return self.refuse(request)
        if status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            return self.html(
                error_page(self.prefix, 405, "Method not allowed", message, asset=self.asset), 405
            )
        return self.error(NotFoundError(f"no page at {request.url.path[:200]}: start at the overview"))


def _int(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{what} must be an integer, got {value[:40]!r}") from None


def create_app(fl: Featurelake, *, prefix: str = "", token: str | None = None) -> Starlette:
    """The UI of ``fl``'s project as an ASGI app, its pages under ``prefix``; ``token`` defaults to
    ``server.token``. The app does not close ``fl``."""
    if token is None and fl.project.config.settings.server.token:
        token = fl.project.config.settings.server.token.get_secret_value()
    ui = UI(fl, prefix=prefix, token=token)
    app = Starlette(routes=ui.routes(), exception_handlers={404: ui.not_found, 405: ui.not_found})
    app.state.ui = ui
    return app


class Mounted:
    """``inner`` (e.g. the feature server) with the UI answering every path under ``prefix``.

    Pure ASGI: a request for ``prefix`` or ``prefix/...`` goes to the UI, which checks the token itself
    (browsers cannot send a bearer header, so it also accepts its session cookie); everything else, and the
    lifespan, goes to ``inner`` untouched.
    """

    def __init__(self, inner: ASGIApp, ui: ASGIApp, prefix: str = "/ui") -> None:
        self.inner, self.ui, self.prefix = inner, ui, prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == self.prefix or path.startswith(self.prefix + "/"):
                await self.ui(scope, receive, send)
                return
        await self.inner(scope, receive, send)


def mount(inner: ASGIApp, fl: Featurelake, prefix: str = "/ui") -> Mounted:
    """``inner`` with the UI of ``fl`` under ``prefix`` (``featurelake serve``)."""
    return Mounted(inner, create_app(fl, prefix=prefix), prefix)


__all__ = ["Mounted", "create_app", "mount", "status_of"]
