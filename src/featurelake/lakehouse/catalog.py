"""Open the project's Iceberg catalog (PyIceberg SQL catalog on SQLite or PostgreSQL) and retry its calls.

The embedded default is SQLite in WAL mode, which Spark's JDBC catalog needs too (the journal mode is stored
in the database file, so both engines see it). Lock waits are bounded by ``catalog.lock_timeout_seconds`` and
transient failures (locked database, unreachable server) are retried with backoff, then reported as
``CatalogUnavailableError`` with the URI (password hidden) and what to check.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from featurelake.errors import CatalogUnavailableError, ConfigError
from featurelake.lakehouse import compat

T = TypeVar("T")

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, DBAPIError)


def safe_uri(uri: str) -> str:
    """The URI with any password masked, for messages."""
    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri


def _make_engine(uri: str, lock_timeout: float) -> SAEngine:
    url = make_url(uri)
    if url.get_backend_name() == "sqlite":
        db = url.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(uri, connect_args={"timeout": lock_timeout})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(lock_timeout * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.close()

        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(
            uri, pool_pre_ping=True, connect_args={"connect_timeout": max(1, int(lock_timeout))}
        )
    return create_engine(uri, pool_pre_ping=True)


def retry_transient(fn: Callable[[], T], *, what: str, uri: str, retries: int, base_delay: float = 0.2) -> T:
    """Call ``fn``; on a locked or unreachable database retry with jittered backoff, then raise clearly."""
    attempt = 0
    while True:
        try:
            return fn()
        except TRANSIENT_DB_ERRORS as exc:
            attempt += 1
            if attempt > retries:
                reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                locked = "locked" in reason.lower()
                hint = (
                    "another process holds a lock on the catalog database; retry when it finishes"
                    if locked
                    else "check that the database server is running and catalog.uri (or FEATURELAKE_CATALOG__URI) is right"
                )
                raise CatalogUnavailableError(
                    f"catalog {safe_uri(uri)} is {'locked' if locked else 'unavailable'} while trying to {what} "
                    f"(gave up after {retries + 1} attempts: {reason}); {hint}"
                ) from exc
            time.sleep(base_delay * (2 ** (attempt - 1)) * (0.5 + random.random()))


def open_catalog(
    name: str, uri: str, warehouse: str, *, lock_timeout: float = 5.0, retries: int = 4
) -> SqlCatalog:
    """Open (creating its tables if needed) the SQL catalog at ``uri`` with data under ``warehouse``."""
    try:
        engine = _make_engine(uri, lock_timeout)
    except Exception as exc:
        raise ConfigError(
            f"catalog.uri {safe_uri(uri)} is not usable: {exc}; use sqlite:///path or postgresql+psycopg://..."
        ) from exc
    return retry_transient(
        # SqlCatalog cannot take an engine we configure (lock timeouts, WAL): compat builds one on ours.
        lambda: compat.sql_catalog_on_engine(name, engine, uri=uri, warehouse=warehouse),
        what="open the catalog",
        uri=uri,
        retries=retries,
    )
