"""Open the project's Iceberg catalog and retry its calls.

``catalog.type: sql`` (the default) is PyIceberg's SQL catalog on SQLite or PostgreSQL, built here on an engine
we configure; every other type (``rest``, ``glue``, ``hive``, ...) is built by PyIceberg's ``load_catalog``
with ``catalog.properties`` (secrets resolved from the environment by the config, redacted in every message
here). Both get the ``storage`` section's FileIO properties, so the warehouse may live on S3.

The embedded default is SQLite in WAL mode, which Spark's JDBC catalog needs too (the journal mode is stored
in the database file, so both engines see it). Lock waits are bounded by ``catalog.lock_timeout_seconds`` and
transient failures (locked database, unreachable server) are retried with jittered backoff
(``lakehouse.retry``), then reported as ``CatalogUnavailableError`` with the URI (password hidden) and what
to check. A REST catalog's dropped connections and 503 answers count as transient too. Object storage that
failed after its client's own retries (``lakehouse.storage``) becomes ``StorageUnavailableError`` at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyiceberg.catalog import Catalog
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from featurelake.config import redact_text
from featurelake.errors import CatalogUnavailableError, ConfigError, StorageUnavailableError
from featurelake.lakehouse import compat
from featurelake.lakehouse.retry import Backoff, call_with_retries
from featurelake.lakehouse.storage import is_storage_failure, storage_error

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
    if isinstance(exc, TRANSIENT_DB_ERRORS):
        return True
    from pyiceberg.exceptions import ServiceUnavailableError
    from requests.exceptions import ConnectionError as HTTPConnectionError
    from requests.exceptions import Timeout

    return isinstance(exc, HTTPConnectionError | Timeout | ServiceUnavailableError)


def _refused(exc: BaseException) -> bool:
    from pyiceberg.exceptions import ForbiddenError, OAuthError, UnauthorizedError

    return isinstance(exc, UnauthorizedError | ForbiddenError | OAuthError)


def retry_transient(
    fn: Callable[[], T],
    *,
    what: str,
    uri: str,
    retries: int,
    base_delay: float = 0.2,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``fn``; on a locked or unreachable database retry with jittered backoff, then raise clearly.

    Object storage failures are not retried here (PyArrow's S3 client already retried each request): they
    become ``StorageUnavailableError`` naming ``what``.
    """

    def guarded() -> T:
        try:
            return fn()
        except StorageUnavailableError:
            raise
        except Exception as exc:
            if is_storage_failure(exc):
                raise storage_error(exc, what) from exc
            if "file is not a database" in str(exc):  # SQLite: damaged, and no retry will mend it
                raise ConfigError(
                    f"catalog {safe_uri(uri)} cannot be read while trying to {what} (file is not a database): the "
                    "catalog's database is damaged or is not a catalog; featurelake leaves it as it is: restore it "
                    "from a backup, or point catalog.uri (FEATURELAKE_CATALOG__URI) at the catalog's database"
                ) from None
            if _refused(exc):
                raise ConfigError(
                    f"catalog {safe_uri(uri)} refused the credentials while trying to {what} "
                    f"({type(exc).__name__}: {exc}); check catalog.properties (credential, token, scope: set "
                    "through the environment variables they name)"
                ) from None
            raise

    def give_up(exc: BaseException) -> CatalogUnavailableError:
        reason = (str(getattr(exc, "orig", exc)).strip() or type(exc).__name__).splitlines()[0]
        locked = "locked" in reason.lower()
        hint = (
            "another process holds a lock on the catalog database; retry when it finishes"
            if locked
            else f"check that the {'catalog' if web else 'database'} server is running and catalog.uri "
            "(or FEATURELAKE_CATALOG__URI) is right"
        )
        return CatalogUnavailableError(
            f"catalog {safe_uri(uri)} is {'locked' if locked else 'unavailable'} while trying to {what} "
            f"(gave up after {retries + 1} attempts: {reason}); {hint}"
        )

    web = uri.startswith(("http://", "https://"))
    return call_with_retries(
        guarded,
        retry_on=_is_transient,
        attempts=retries + 1,
        backoff=Backoff(first=base_delay, cap=TRANSIENT_MAX_DELAY),
        give_up=give_up,
        sleep=sleep,
    )


def open_catalog(
    name: str,
    uri: str,
    warehouse: str,
    *,
    catalog_type: str = "sql",
    properties: dict[str, str] | None = None,
    lock_timeout: float = 5.0,
    retries: int = 4,
) -> Catalog:
    """Open the catalog of ``catalog_type`` at ``uri`` with data under ``warehouse``.

    ``properties`` (storage FileIO properties, then ``catalog.properties``) go to PyIceberg as they are. The
    SQL catalog creates its tables if needed, on an engine with our lock timeout and WAL mode.
    """
    props = dict(properties or {})
    # Commits stage their metadata dozens of times; PyIceberg recomputes it on each read (compat says why).
    compat.memoize_transaction_metadata()
    if catalog_type == "sql":
        try:
            engine = _make_engine(uri, lock_timeout)
        except Exception as exc:
            raise ConfigError(
                f"catalog.uri {safe_uri(uri)} is not usable: {exc}; use sqlite:///path or postgresql+psycopg://..."
            ) from exc
        return retry_transient(
            # SqlCatalog cannot take an engine we configure (lock timeouts, WAL): compat builds one on ours.
            lambda: compat.sql_catalog_on_engine(
                name, engine, **{**props, "uri": uri, "warehouse": warehouse}
            ),
            what="open the catalog",
            uri=uri,
            retries=retries,
        )
    return retry_transient(
        lambda: _load_catalog(name, catalog_type, uri, warehouse, props),
        what="open the catalog",
        uri=uri or catalog_type,
        retries=retries,
    )


def _load_catalog(name: str, catalog_type: str, uri: str, warehouse: str, props: dict[str, str]) -> Catalog:
    """PyIceberg's ``load_catalog`` for ``catalog_type``; its errors become ours, with secrets redacted."""
    from pyiceberg.catalog import CatalogType, load_catalog
    from pyiceberg.exceptions import (
        ForbiddenError,
        NotInstalledError,
        OAuthError,
        RESTError,
        UnauthorizedError,
    )

    known = [t.value for t in CatalogType]
    if catalog_type not in known:
        raise ConfigError(
            f"catalog.type {catalog_type!r} is not a catalog PyIceberg knows: use sql (the default) or one of "
            f"{', '.join(t for t in known if t != 'sql')}"
        )
    full = {**props, "type": catalog_type, "warehouse": warehouse}
    if uri:
        full["uri"] = uri
    where = f"{catalog_type} catalog {safe_uri(uri)}" if uri else f"{catalog_type} catalog {name!r}"
    try:
        return load_catalog(name, **full)
    except NotInstalledError as exc:
        raise ConfigError(f"{where}: {redact_text(str(exc), props)}") from None
    except (UnauthorizedError, ForbiddenError, OAuthError) as exc:
        raise ConfigError(
            f"{where} refused the credentials ({type(exc).__name__}: {redact_text(str(exc), props)}); check "
            "catalog.properties (credential, token, scope: set through the environment variables they name)"
        ) from None
    except (ValueError, KeyError, TypeError, RESTError) as exc:
        if _is_transient(exc):
            raise
        raise ConfigError(
            f"{where} cannot be opened ({type(exc).__name__}: {redact_text(str(exc), props)}); check catalog.uri "
            "and catalog.properties (docs/storage.md)"
        ) from None
