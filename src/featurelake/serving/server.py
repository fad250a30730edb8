"""The HTTP feature server (ASGI, FastAPI): Feast-compatible lookups, health and Prometheus metrics.

Endpoints::

    POST /get-online-features   Feast's request and response shapes (any Content-Type: Feast answers 422
                                when it is not application/json; we parse the body as JSON regardless)
    POST /predict/{model}       {"entities": {...}} -> predictions of the model's Production version
    POST /push                  Feast's push: {"push_source_name": VIEW, "df": {column: [values]}, "to":
                                "online" | "offline" | "online_and_offline"} -> 200 null (when the server
                                was given a push handler: ``featurelake serve`` passes streaming.push's)
    GET  /healthz               200 when the online store answers, else 503 (never needs the token)
    GET  /metrics               Prometheus exposition (summed over the worker processes)

With ``server.token`` set, every path but ``/healthz`` (``/openapi.json`` and unknown paths too) answers
401 without ``Authorization: Bearer <token>``; the check is an ASGI middleware in front of the routes.

Every error is JSON ``{"error": <class>, "detail": <message>}`` with its status decided in ONE place
(:func:`http_status`): 400 malformed JSON, 401 missing/wrong bearer token, 404 unknown view, feature or
model (or no Production version), 408 a body that did not arrive in time, 413 body or entity count over the
limits, 422 a request that is valid JSON but not a valid lookup, 500 a model that cannot be loaded, 503 the
online store or the registry database is unreachable (the server keeps running and recovers when it returns).
An error body names nothing the caller did not ask about: no other view or model, no file path (5xx bodies
say what is unavailable and leave the details to the server log; local paths are masked in any error body).

:func:`serve` runs ``server.workers`` processes (default: one per core) behind one socket, each with its own
online store, registry and DuckDB connections, and the slow-client limits of ``serving.guard``.
"""

from __future__ import annotations

import functools
import gc
import hmac
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from featurelake.config import reveal
from featurelake.errors import (
    CatalogUnavailableError,
    FeaturelakeError,
    NotFoundError,
    OnlineStoreUnavailableError,
    RequestError,
    StorageUnavailableError,
    UsageError,
)
from featurelake.serving import metrics, open_store
from featurelake.serving.lookup import OnlineService, table_key_types
from featurelake.serving.models import ModelServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, MutableMapping

    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

log = logging.getLogger("featurelake.server")
JSON = "application/json"
#: Environment of a ``featurelake serve --workers N`` worker process: the project directory it serves.
WORKER_PROJECT_ENV = "FEATURELAKE_SERVE_PROJECT"
#: What a 5xx body says (the exception's own message, which may name files and hosts, goes to the log).
_UNAVAILABLE = {
    OnlineStoreUnavailableError: "the online store",
    CatalogUnavailableError: "the catalog or the model registry database",
    StorageUnavailableError: "object storage",
}


class HTTPError(Exception):
    """An HTTP-level refusal (bad JSON, auth, body too large) with its status; never leaves the server."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def http_status(exc: BaseException) -> int:
    """The one mapping from featurelake errors to HTTP status codes."""
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, RequestError):
        return exc.http_status
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, OnlineStoreUnavailableError | CatalogUnavailableError | StorageUnavailableError):
        return 503
    if isinstance(exc, UsageError):
        return 422
    return 500


def _public_detail(exc: BaseException, status: int) -> str:
    """What the caller is told: a 4xx says what was wrong with the request; a 5xx only what failed."""
    if status < 500 and isinstance(exc, FeaturelakeError | HTTPError):
        return str(exc)
    _log_throttled(exc)
    for kind, what in _UNAVAILABLE.items():
        if isinstance(exc, kind):
            return (
                f"{what} is unavailable ({type(exc).__name__}); the server keeps running and answers again "
                "once it is back (details in the server log)"
            )
    return f"internal error: {type(exc).__name__} (see the server log)"


_logged: dict[type, float] = {}
_logged_lock = threading.Lock()


def _log_throttled(exc: BaseException, every: float = 10.0) -> None:
    """Log a 5xx's full message, once per error class per ``every`` seconds (an outage is not a log flood)."""
    if not isinstance(exc, FeaturelakeError):
        return  # unexpected errors are logged with their traceback where they are caught
    now = time.monotonic()
    with _logged_lock:
        if now - _logged.get(type(exc), -every) < every:
            return
        _logged[type(exc)] = now
    log.warning("answering %d: %s", http_status(exc), exc)


def _error_response(exc: BaseException) -> Response:
    status = http_status(exc)
    detail = _public_detail(exc, status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = orjson.dumps({"error": type(exc).__name__, "detail": detail})
    return Response(body, status_code=status, media_type=JSON, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, read straight from the ASGI messages (Starlette's ``Headers`` and ``stream()``
    cost more than a small lookup's body takes to arrive)."""
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise HTTPError(
                    f"request body of {value.decode()} bytes exceeds the limit of {limit} "
                    "(server.max_request_bytes)",
                    413,
                )
            break
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client went away mid-body, or the slow-client guard closed it (server.body_timeout_seconds).
            raise HTTPError("the request body did not arrive in full", 408)
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise HTTPError(
                    f"request body exceeds the limit of {limit} bytes (server.max_request_bytes)", 413
                )
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse_lookup(body: bytes) -> tuple[list[str] | None, str | None, dict[str, list[Any]], bool]:
    """``(features, feature_service, entities, full_feature_names)``: exactly one of the first two is set."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(f"request body is not valid JSON: {exc}", 400) from None
    if not isinstance(req, dict):
        raise RequestError('request body must be a JSON object: {"features": [...], "entities": {...}}')
    unknown = set(req) - {"features", "entities", "full_feature_names", "feature_service"}
    if unknown:
        raise RequestError(
            f"unknown request field(s) {', '.join(sorted(unknown))}: use features (or feature_service) and "
            "entities"
        )
    svc = req.get("feature_service")
    features = req.get("features")
    if svc is not None:
        if features is not None:
            raise RequestError('give either "features" or "feature_service", not both')
        if not isinstance(svc, str) or not svc:
            raise RequestError('"feature_service" must be the name of a feature service, e.g. "fraud_inputs"')
    elif not isinstance(features, list) or not features:
        raise RequestError(
            '"features" must be a non-empty list such as ["user_features:amount_avg_1d"] (or give '
            '"feature_service": "NAME")'
        )
    entities = req.get("entities")
    if not isinstance(entities, dict):
        raise RequestError(
            '"entities" must be an object mapping join keys to lists, e.g. {"user_id": [1, 2]}'
        )
    full = req.get("full_feature_names", False)
    if not isinstance(full, bool):
        raise RequestError('"full_feature_names" must be true or false')
    return features, svc, entities, full


def _parse_predict(body: bytes) -> dict[str, list[Any]]:
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(f"request body is not valid JSON: {exc}", 400) from None
    if not isinstance(req, dict) or set(req) != {"entities"} or not isinstance(req["entities"], dict):
        raise RequestError('request body must be {"entities": {"<join key>": [keys...]}}')
    return req["entities"]


#: Work that runs beside the server: called when it starts, returns the function that stops it.
Background = Callable[[], Callable[[], None]]
_PUSH_FIELDS = {"push_source_name", "df", "to", "allow_registry_cache", "transform_on_write"}
#: Online-only pushes of at most this many rows run in the event loop once their view was pushed to.
_INLINE_PUSH_ROWS = 64


class PushHandler(Protocol):
    """What ``POST /push`` calls (``streaming.push.PushService``; this layer does not import it)."""

    def push(self, view: str, rows: Any, to: str) -> object:
        """Write ``rows`` (a dict of equally long column lists) to ``view``'s online and/or offline store."""

    def start(self) -> Callable[[], None]:
        """Start the background work (the offline flusher); returns the function that stops it."""

    def close(self) -> None:
        """Release what the handler holds."""


#: Builds the push handler from the server's online store.
PushFactory = Callable[["OnlineStore"], PushHandler]


def _parse_push(body: bytes) -> tuple[str, dict[str, list[Any]], str]:
    """``(view, columns, to)`` of Feast's push body."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(f"request body is not valid JSON: {exc}", 400) from None
    if not isinstance(req, dict):
        raise RequestError(
            'request body must be a JSON object: {"push_source_name": VIEW, "df": {column: [values]}, "to": '
            '"online"}'
        )
    unknown = set(req) - _PUSH_FIELDS
    if unknown:
        raise RequestError(
            f"unknown request field(s) {', '.join(sorted(unknown))}: use push_source_name, df and to"
        )
    view = req.get("push_source_name")
    if not isinstance(view, str) or not view:
        raise RequestError('"push_source_name" must name the feature view to push to')
    df = req.get("df")
    if not isinstance(df, dict) or not df or not all(isinstance(v, list) for v in df.values()):
        raise RequestError(
            f'"df" must map each column of view {view} to a list of values, e.g. {{"user_id": [1], ...}}'
        )
    lengths = {len(v) for v in df.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{k}: {len(v)}" for k, v in df.items())
        raise RequestError(f'the columns of "df" for view {view} must be equally long ({sizes})')
    to = req.get("to", "online")
    for flag in ("allow_registry_cache", "transform_on_write"):
        if not isinstance(req.get(flag, True), bool):
            raise RequestError(f'"{flag}" must be true or false')
    return view, df, to


class _Lookups:
    """Runs ``service.get_online_features`` in the event loop when that is cheap and safe, else in a thread.

    In the loop: a lookup of at most :attr:`INLINE_ENTITIES` entities whose request shape (the features, or
    the feature service, and ``full_feature_names``) was answered before, so its plan and key types are
    known and what is left is one store round trip (Redis ``MGET`` or an indexed SQLite read, both bounded by
    the store's timeouts) and a little decoding. Handing such a lookup to a thread and back cost more CPU
    than the lookup (~85 µs) and, on a busy machine, a wait for the OS to schedule each thread: with 32
    concurrent clients on 2 cores (paired runs), 1.3-1.7x the requests/s and a p99 of 11-24 ms against 50-75 ms
    (docs/serving.md). In a thread: the first request of a shape (it may ask the catalog for key types)
    and large lookups (their decoding would hold up the other requests of this worker).
    """

    INLINE_ENTITIES = 100
    MAX_SHAPES = 1024

    def __init__(self, service: OnlineService) -> None:
        self.service = service
        self.known: set[tuple[Any, ...]] = set()

    async def __call__(self, features: Any, entities: Any, **options: Any) -> dict[str, Any]:
        shape = self._shape(features, options)
        sizes = (
            [len(v) for v in entities.values() if isinstance(v, list)] if isinstance(entities, dict) else []
        )
        small = max(sizes, default=0) <= self.INLINE_ENTITIES
        if small and shape is not None and shape in self.known:
            return self.service.get_online_features(features, entities, **options)
        result: dict[str, Any] = await run_in_threadpool(
            self.service.get_online_features, features, entities, **options
        )
        if shape is not None:
            if len(self.known) >= self.MAX_SHAPES:
                self.known.clear()
            self.known.add(shape)
        return result

    @staticmethod
    def _shape(features: Any, options: dict[str, Any]) -> tuple[Any, ...] | None:
        if features is not None and not (
            isinstance(features, list) and all(isinstance(f, str) for f in features)
        ):
            return None
        service = options.get("feature_service")
        if service is not None and not isinstance(service, str):
            return None
        return (tuple(features or ()), service, bool(options.get("full_feature_names")))


_UNAUTHORIZED = orjson.dumps(
    {"error": "HTTPError", "detail": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"}
)


def _local_paths(project: Project) -> tuple[str, ...]:
    """The server's own directories and files that an error message might name, longest first."""
    cfg = project.config
    settings = cfg.settings
    found: set[Path] = {Path(project.root), Path(project.root).resolve(), Path.home()}
    for value in (settings.online_store.path, settings.registry.artifacts, settings.catalog.warehouse):
        if value and "://" not in value:
            found.add(cfg.path(value).resolve())
    for uri in (reveal(settings.registry.uri), reveal(settings.catalog.uri)):
        if uri and uri.startswith("sqlite:///"):
            file = cfg.path(cfg.sqlalchemy_uri(uri)[len("sqlite:///") :]).resolve()
            found.update((file, file.parent))
    texts = {str(p) for p in found if len(str(p)) > 4}
    return tuple(sorted(texts, key=len, reverse=True))


#: ``POST /predict/{model}``: the path's prefix (``{model}`` is one path segment, as FastAPI matches it).
_PREDICT = "/predict/"


class _Edge:
    """Pure ASGI, in front of every route: the bearer token on every path but ``/healthz``, and no local
    path in an error body (any status >= 400 has its body scanned; successful responses pass untouched).

    It also dispatches the hot routes, ``POST /get-online-features``, ``POST /predict/{model}`` and ``POST /push``,
    straight to their FastAPI endpoint functions (the same functions FastAPI routes to, and documents in
    ``/openapi.json``): their handlers read the raw request and catch every error themselves, so FastAPI's
    routing, dependency solving and middleware layers would only add ~0.1 ms of CPU to each request. It sits
    in front of the FastAPI app itself (:class:`_ServerApp`), not in its middleware stack, so a lookup does
    not pass FastAPI's per-request telemetry check, Starlette's error middleware or the body-size wrapper
    either (~40 µs of CPU together); everything else goes on to the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: bytes | None,
        hidden: tuple[str, ...],
        lookup: Callable[[Request], Awaitable[Response]] | None = None,
        predict: Callable[[str, Request], Awaitable[Response]] | None = None,
        push: Callable[[Request], Awaitable[Response]] | None = None,
    ) -> None:
        self.app = app
        self.push = push
        self.token = token
        self.hidden = tuple(h.encode() for h in hidden)
        self.lookup = lookup
        self.predict = predict

    def _authorized(self, scope: Message) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token or b"")
        return False

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token is not None and scope["path"] != "/healthz" and not self._authorized(scope):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", JSON.encode()),
                        (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _UNAUTHORIZED})
            return
        send = self._masking(send) if self.hidden else send
        if scope["method"] == "POST":
            path = scope["path"]
            response = None
            if path == "/get-online-features" and self.lookup is not None:
                response = await self.lookup(Request(scope, receive))
            elif path == "/push" and self.push is not None:
                response = await self.push(Request(scope, receive))
            elif path.startswith(_PREDICT) and self.predict is not None:
                model = path[len(_PREDICT) :]
                if model and "/" not in model:
                    response = await self.predict(model, Request(scope, receive))
            if response is not None:
                # What Response.__call__ sends, without its background-task and path-send handling.
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": response.raw_headers,
                    }
                )
                await send({"type": "http.response.body", "body": response.body})
                return
        await self.app(scope, receive, send)

    def _masking(self, send: Send) -> Send:
        held: list[Message] = []

        async def masked(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.append(message)  # hold the head: the body's length may change
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            held.append(message)
            if message.get("more_body", False):
                return
            start, *parts = held
            held.clear()
            body = b"".join(p.get("body", b"") for p in parts)
            for path in self.hidden:
                body = body.replace(path, b"<server path>")
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        return masked


def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method, ...) in the server's error shape, not ``{"detail"}``."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    headers = getattr(exc, "headers", None)
    if status in (404, 405):
        path = request.url.path if len(request.url.path) <= 100 else request.url.path[:100] + "..."
        name = "NotFound" if status == 404 else "MethodNotAllowed"
        detail = (
            f"no route for {request.method} {path}: the server answers POST /get-online-features, "
            "POST /predict/{model}, POST /push, GET /metrics and GET /healthz"
        )
    else:
        name, detail = "HTTPError", str(getattr(exc, "detail", "") or status)
    body = orjson.dumps({"error": name, "detail": detail})
    return Response(body, status_code=status, media_type=JSON, headers=headers)


class _ServerApp(FastAPI):
    """The server's FastAPI app with :class:`_Edge` in front of it for HTTP requests (set by :func:`create_app`);
    the lifespan goes to FastAPI directly."""

    edge: _Edge | None = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        edge = self.edge
        if edge is not None and scope["type"] == "http":
            await edge(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    project: Project,
    *,
    store: OnlineStore | None = None,
    background: Sequence[Background] = (),
    dedicated: bool = False,
    push: PushFactory | None = None,
) -> FastAPI:
    """The ASGI app serving ``project``'s views from its online store (or ``store``).

    ``background`` starts with the server and stops with it: ``featurelake serve`` flushes the serving
    metrics into the local metrics state that way (``monitoring.serving``), which this layer does not know.
    ``dedicated``: the app owns its process (``featurelake serve``), which is tuned for serving once started
    (the objects of start-up are moved out of the garbage collector's way with ``gc.freeze``, so no request
    waits for a full collection of the imported libraries).
    ``push`` builds the handler of ``POST /push`` from the online store (without it the route is absent).
    """
    settings = project.config.settings.server
    service = OnlineService(
        project.definitions,
        store if store is not None else open_store(project.config),
        key_types=table_key_types(project),
        max_entities=settings.max_entities,
    )
    token = settings.token.get_secret_value().encode() if settings.token else None

    def registry() -> Any:
        from featurelake.registry import ModelRegistry

        return ModelRegistry.for_project(project)

    models = ModelServer(
        service,
        registry,
        refresh_seconds=settings.model_refresh_seconds,
        allow_pickle=project.config.settings.registry.allow_pickle,
        fill_defaults=project.config.settings.prediction.nan_policy == "fill",
        registry_exists=lambda: _registry_exists(project),
    )
    limit = settings.max_request_bytes
    lookups = _Lookups(service)
    visibility = metrics.Visibility(service.store, project.definitions.views)
    pusher = push(service.store) if push is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Learn every view's key type now, so no request ever waits on the catalog; say now (in the log)
        # which views the store holds only in the layout before scopes, which is never served.
        for view in project.definitions.views.values():
            try:
                service.key_types(view)
                notice = service.layout_notice(view.name)
                if notice:
                    log.warning("%s", notice)
            except FeaturelakeError as exc:
                log.warning("view %s is not servable yet: %s", view.name, exc)
        models.start()  # load every Production model now, in the background, not on its first request
        stops = [start() for start in background]
        if pusher is not None:  # publishes what an earlier process buffered, then what arrives
            stops.append(pusher.start())
        if dedicated:
            gc.collect()
            gc.freeze()
        yield
        for stop in reversed(stops):
            stop()
        models.close()
        if pusher is not None:
            pusher.close()
        service.close()

    app = _ServerApp(title="featurelake feature server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_exception_handler(StarletteHTTPException, _http_exception)

    @app.post("/get-online-features")
    async def get_online_features(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            features, svc, entities, full = _parse_lookup(await _read_body(request, limit))
            result = await lookups(features, entities, feature_service=svc, full_feature_names=full)
            response = Response(orjson.dumps(result), media_type=JSON)
        except Exception as exc:
            if isinstance(exc, OnlineStoreUnavailableError):
                metrics.ONLINE_STORE_ERRORS.inc()
            elif not isinstance(exc, FeaturelakeError | HTTPError):
                log.exception("get-online-features failed")
            response = _error_response(exc)
        metrics.observe("/get-online-features", response.status_code, time.perf_counter() - t0)
        return response

    @app.post("/predict/{model}")
    async def predict(model: str, request: Request) -> Response:
        t0, loading = time.perf_counter(), 0.0
        try:
            entities = _parse_predict(await _read_body(request, limit))
            result, loading = await run_in_threadpool(models.predict_timed, model, entities)
            scored = sum(p is not None for p in result["predictions"])
            metrics.count_predictions(result["model"], result["model_version"], scored)
            response = Response(orjson.dumps(result), media_type=JSON)
        except Exception as exc:
            if isinstance(exc, OnlineStoreUnavailableError):
                metrics.ONLINE_STORE_ERRORS.inc()
            if not isinstance(exc, HTTPError | UsageError | OnlineStoreUnavailableError):
                log.exception("predict %s failed", model)
            response = _error_response(exc)
        # Waiting for the model to load (a request right after the server started) is not serving latency.
        metrics.observe(f"/predict/{model}", response.status_code, time.perf_counter() - t0 - loading)
        return response

    if pusher is not None:
        pushed: set[str] = set()

        @app.post("/push")
        async def push_rows(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                view, columns, to = _parse_push(await _read_body(request, limit))
                rows = len(next(iter(columns.values())))
                if to == "online" and rows <= _INLINE_PUSH_ROWS and view in pushed:
                    # As a known lookup: one store round trip (bounded by its timeouts) and a little
                    # encoding, cheaper than the hand-off to a thread; offline rows wait for an fsync.
                    pusher.push(view, columns, to)
                else:
                    await run_in_threadpool(pusher.push, view, columns, to)
                    pushed.add(view)  # its writer is built (the first push of a view may ask the catalog)
                response = Response(b"null", media_type=JSON)  # Feast answers 200 with no content
            except Exception as exc:
                if isinstance(exc, OnlineStoreUnavailableError):
                    metrics.ONLINE_STORE_ERRORS.inc()
                elif not isinstance(exc, FeaturelakeError | HTTPError):
                    log.exception("push failed")
                response = _error_response(exc)
            metrics.observe("/push", response.status_code, time.perf_counter() - t0)
            return response

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            await run_in_threadpool(service.store.ping)
        except OnlineStoreUnavailableError as exc:
            body = {
                "status": "unavailable",
                "online_store": service.store.type_name,
                "detail": _public_detail(exc, 503),
            }
            return Response(orjson.dumps(body), status_code=503, media_type=JSON)
        return Response(
            orjson.dumps({"status": "ok", "online_store": service.store.type_name}), media_type=JSON
        )

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = await run_in_threadpool(metrics.exposition, visibility)
        return Response(body, media_type=content_type)

    # Outermost: the token is checked before routing (so /openapi.json and unknown paths need it too).
    hot = {
        route.path: route.endpoint
        for route in app.routes
        if isinstance(route, APIRoute) and route.methods == {"POST"}
    }
    app.edge = _Edge(
        super(_ServerApp, app).__call__,
        token=token,
        hidden=_local_paths(project),
        lookup=hot.get("/get-online-features"),
        predict=hot.get("/predict/{model}"),
        push=hot.get("/push"),
    )
    return app


def _registry_exists(project: Project) -> bool:
    """False for an embedded SQLite registry not created yet (starting a server must not create it)."""
    uri = project.config.sqlalchemy_uri(project.config.settings.registry.uri.get_secret_value())
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or project.config.path(uri[len(prefix) :]).exists()


def default_workers() -> int:
    """``server.workers`` when unset: one worker process per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: prometheus_client's switch to its multiprocess mode (read when a worker process imports it).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve(
    project: Project,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
    background: Sequence[Background] = (),
    workers: int | None = None,
    worker_app: str | None = None,
    push: PushFactory | None = None,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
) -> None:
    """Run the server until interrupted (``featurelake serve``).

    ``workers`` processes (default ``server.workers``, else :func:`default_workers`) share one listening
    socket under uvicorn's supervisor, which restarts a worker that dies. One worker runs here, with
    ``background``. With more, every worker process imports ``worker_app`` (``"module:function"``, called
    without arguments, finding the project directory in :data:`WORKER_PROJECT_ENV`) and so opens its own
    online store, registry and DuckDB, and starts its own background work; their metrics are summed on
    ``/metrics`` through prometheus_client's multiprocess mode, in a temporary directory removed on exit.
    ``push`` builds the ``POST /push`` handler (a worker's factory passes its own to :func:`create_app`).
    ``wrap`` composes the app with others (the CLI mounts the web UI under ``/ui`` so; with several workers,
    ``worker_app`` composes its own).
    """
    import uvicorn

    try:
        from featurelake.serving.guard import ConnectionLimits, GuardedHttpToolsProtocol
    except ImportError as exc:  # httptools is part of the server extra
        raise UsageError(f"featurelake serve needs {exc.name}: pip install 'featurelake[server]'") from exc

    settings = project.config.settings.server
    count = workers if workers is not None else (settings.workers or default_workers())
    if count < 1:
        raise UsageError(f"--workers must be at least 1, got {count}")
    limits = ConnectionLimits(
        header_timeout_seconds=settings.header_timeout_seconds,
        body_timeout_seconds=settings.body_timeout_seconds,
        keep_alive_seconds=settings.keep_alive_seconds,
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
    )
    options: dict[str, Any] = {
        "host": host or settings.host,
        "port": port if port is not None else settings.port,
        "log_level": log_level,
        "access_log": False,
        # uvicorn's httptools protocol with the deadlines it has no setting for (serving/guard.py).
        "http": functools.partial(GuardedHttpToolsProtocol, limits=limits),
        "timeout_keep_alive": max(1, round(settings.keep_alive_seconds)),  # the guard applies the exact value
        # uvicorn answers 503 to a request arriving with this many connections open, counting its own; the
        # guard closes connections over max_connections at accept, so this only backs it up.
        "limit_concurrency": settings.max_connections + 1,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "ws": "none",  # no WebSocket routes: an upgrade request is an ordinary (refused) request
        # A worker busy starting (imports, the project, the catalog) on a loaded machine is not hung.
        "timeout_worker_healthcheck": 30,
    }
    if count == 1:
        app = create_app(project, background=background, dedicated=True, push=push)
        uvicorn.run(wrap(app) if wrap is not None else app, **options)
        return
    if worker_app is None:
        raise UsageError("serving with several workers needs worker_app, the import path of the app factory")
    metrics_dir = tempfile.mkdtemp(prefix="featurelake-metrics-")
    saved = {name: os.environ.get(name) for name in (METRICS_DIR_ENV, WORKER_PROJECT_ENV)}
    os.environ[METRICS_DIR_ENV] = metrics_dir  # inherited by the worker processes uvicorn spawns
    os.environ[WORKER_PROJECT_ENV] = str(project.root)
    try:
        log.info("starting %d worker processes (metrics summed through %s)", count, metrics_dir)
        uvicorn.run(worker_app, factory=True, workers=count, **options)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(metrics_dir, ignore_errors=True)


__all__ = [
    "METRICS_DIR_ENV",
    "WORKER_PROJECT_ENV",
    "HTTPError",
    "PushFactory",
    "PushHandler",
    "create_app",
    "default_workers",
    "http_status",
    "serve",
]
