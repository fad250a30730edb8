"""The HTTP feature server (ASGI, FastAPI): Feast-compatible lookups, health and Prometheus metrics.

Endpoints::

    POST /get-online-features   Feast's request and response shapes (any Content-Type: Feast answers 422
                                when it is not application/json; we parse the body as JSON regardless)
    POST /predict/{model}       {"entities": {...}} -> predictions of the model's Production version
    GET  /healthz               200 when the online store answers, else 503 (never needs the token)
    GET  /metrics               Prometheus exposition

Every error is JSON ``{"error": <class>, "detail": <message>}`` with its status decided in ONE place
(:func:`http_status`): 400 malformed JSON, 401 missing/wrong bearer token, 404 unknown view, feature or
model (or no Production version), 413 body or entity count over the limits, 422 a request that is valid JSON
but not a valid lookup, 500 a model that cannot be loaded, 503 the online store or the registry database is
unreachable (the server keeps running and recovers when it returns).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

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
    from collections.abc import AsyncIterator

    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

log = logging.getLogger("featurelake.server")
JSON = "application/json"


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


def _error_response(exc: BaseException) -> Response:
    status = http_status(exc)
    known = isinstance(exc, FeaturelakeError | HTTPError)
    detail = str(exc) if known else f"internal error: {type(exc).__name__} (see the server log)"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = orjson.dumps({"error": type(exc).__name__, "detail": detail})
    return Response(body, status_code=status, media_type=JSON, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(
            f"request body of {declared} bytes exceeds the limit of {limit} (server.max_request_bytes)", 413
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(
                f"request body exceeds the limit of {limit} bytes (server.max_request_bytes)", 413
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_lookup(body: bytes) -> tuple[list[str], dict[str, list[Any]], bool]:
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(f"request body is not valid JSON: {exc}", 400) from None
    if not isinstance(req, dict):
        raise RequestError('request body must be a JSON object: {"features": [...], "entities": {...}}')
    unknown = set(req) - {"features", "entities", "full_feature_names", "feature_service"}
    if unknown:
        raise RequestError(
            f"unknown request field(s) {', '.join(sorted(unknown))}: use features and entities"
        )
    if req.get("feature_service") is not None:
        raise RequestError("feature services are not supported: list the features as 'view:feature'")
    features = req.get("features")
    if not isinstance(features, list) or not features:
        raise RequestError('"features" must be a non-empty list such as ["user_features:amount_avg_1d"]')
    entities = req.get("entities")
    if not isinstance(entities, dict):
        raise RequestError(
            '"entities" must be an object mapping join keys to lists, e.g. {"user_id": [1, 2]}'
        )
    full = req.get("full_feature_names", False)
    if not isinstance(full, bool):
        raise RequestError('"full_feature_names" must be true or false')
    return features, entities, full


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


def create_app(
    project: Project, *, store: OnlineStore | None = None, background: Sequence[Background] = ()
) -> FastAPI:
    """The ASGI app serving ``project``'s views from its online store (or ``store``).

    ``background`` starts with the server and stops with it: ``featurelake serve`` flushes the serving
    metrics into the local metrics state that way (``monitoring.serving``), which this layer does not know.
    """
    settings = project.config.settings.server
    service = OnlineService(
        project.definitions,
        store if store is not None else open_store(project.config),
        key_types=table_key_types(project),
        max_entities=settings.max_entities,
    )
    token = settings.token.encode() if settings.token else None

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
        yield
        for stop in reversed(stops):
            stop()
        models.close()
        service.close()

    app = FastAPI(title="featurelake feature server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    def authorize(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise HTTPError("missing or wrong bearer token: send 'Authorization: Bearer <token>'", 401)

    @app.post("/get-online-features")
    async def get_online_features(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            authorize(request)
            features, entities, full = _parse_lookup(await _read_body(request, limit))
            result = await run_in_threadpool(
                service.get_online_features, features, entities, full_feature_names=full
            )
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
            authorize(request)
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

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            await run_in_threadpool(service.store.ping)
        except OnlineStoreUnavailableError as exc:
            body = {"status": "unavailable", "online_store": service.store.type_name, "detail": str(exc)}
            return Response(orjson.dumps(body), status_code=503, media_type=JSON)
        return Response(
            orjson.dumps({"status": "ok", "online_store": service.store.type_name}), media_type=JSON
        )

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        try:
            authorize(request)
        except HTTPError as exc:
            return _error_response(exc)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app


def _registry_exists(project: Project) -> bool:
    """False for an embedded SQLite registry not created yet (starting a server must not create it)."""
    uri = project.config.sqlalchemy_uri(project.config.settings.registry.uri)
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or project.config.path(uri[len(prefix) :]).exists()


def serve(
    project: Project,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
    background: Sequence[Background] = (),
) -> None:
    """Run the server in this process until interrupted (``featurelake serve``)."""
    import uvicorn

    settings = project.config.settings.server
    uvicorn.run(
        create_app(project, background=background),
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level=log_level,
        access_log=False,
    )


__all__ = ["HTTPError", "create_app", "http_status", "serve"]
