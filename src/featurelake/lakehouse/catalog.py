"""Open the project's Iceberg catalog (PyIceberg SQL catalog on SQLite or PostgreSQL) and retry its calls.

The embedded default is SQLite in WAL mode, which Spark's JDBC catalog needs too (the journal mode is stored
in the database file, so both engines see it). Lock waits are bounded by ``catalog.lock_timeout_seconds`` and
transient failures (locked database, unreachable server) are retried with jittered backoff
(``lakehouse.retry``), then reported as ``CatalogUnavailableError`` with the URI (password hidden) and what
to check.
"""

from __future__ import annotations

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
from featurelake.lakehouse.retry import Backoff, call_with_retries

T = TypeVar("T")

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, DBAPIError)
#: Largest base wait between transient-failure retries (only reached with more than 5 ``catalog.retries``).
TRANSIENT_MAX_DELAY = 5.0


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


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_DB_ERRORS)


def retry_transient(
    fn: Callable[[], T],
    *,
    what: str,
    uri: str,
    retries: int,
    base_delay: float = 0.2,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``fn``; on a locked or unreachable database retry with jittered backoff, then raise clearly."""

    def give_up(exc: BaseException) -> CatalogUnavailableError:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        locked = "locked" in reason.lower()
        hint = (
            "another process holds a lock on the catalog database; retry when it finishes"
            if locked
            else "check that the database server is running and catalog.uri (or FEATURELAKE_CATALOG__URI) is right"
        )
        return CatalogUnavailableError(
            f"catalog {safe_uri(uri)} is {'locked' if locked else 'unavailable'} while trying to {what} "
            f"(gave up after {retries + 1} attempts: {reason}); {hint}"
        )

    return call_with_retries(
        fn,
        retry_on=_is_transient,
        attempts=retries + 1,
        backoff=Backoff(first=base_delay, cap=TRANSIENT_MAX_DELAY),
        give_up=give_up,
        sleep=sleep,
    )


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
