"""The registry database: an SQLAlchemy engine per URL and schema upgrades through Alembic.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and write transactions start with
``BEGIN IMMEDIATE`` so concurrent writers queue for the lock instead of failing halfway through a
transaction. PostgreSQL runs at its default READ COMMITTED; the registry's updates carry their own
preconditions (``... WHERE stage = :expected``) and the one-Production rule is a unique index.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

from featurelake.errors import CatalogUnavailableError, ConfigError
from featurelake.lakehouse.catalog import safe_uri
from featurelake.registry.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_WRITE = "featurelake_write"


def make_engine(uri: str, lock_timeout: float = 10.0) -> Engine:
    """An engine for the registry at ``uri`` (``sqlite:///…`` or ``postgresql+psycopg://…``)."""
    try:
        url = make_url(uri)
    except ArgumentError as exc:
        raise ConfigError(
            f"registry.uri {uri!r} is not a database URL: use sqlite:///path or postgresql+psycopg://..."
        ) from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        db = url.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(uri, connect_args={"timeout": lock_timeout})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Transactions are begun explicitly below (pysqlite's own handling defers them badly).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(lock_timeout * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

        return engine
    if backend == "postgresql":
        try:
            return create_engine(
                uri, pool_pre_ping=True, connect_args={"connect_timeout": max(1, int(lock_timeout))}
            )
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"registry.uri {safe_uri(uri)} needs a PostgreSQL driver ({exc.name} is not installed): "
                "pip install 'featurelake[postgres]'"
            ) from exc
    return create_engine(uri, pool_pre_ping=True)


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on a clean exit."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read transaction."""
    with engine.connect() as conn, conn.begin():
        yield conn


def unavailable(uri: str, exc: OperationalError, what: str) -> CatalogUnavailableError:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    locked = "locked" in reason.lower()
    hint = (
        "another process holds the registry database's lock; retry when it finishes"
        if locked
        else "check that the database server is running and registry.uri (or FEATURELAKE_REGISTRY__URI) is right"
    )
    return CatalogUnavailableError(
        f"model registry {safe_uri(uri)} is {'locked' if locked else 'unavailable'} while trying to {what} "
        f"({reason}); {hint}"
    )


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: Engine, uri: str, revision: str = "head") -> None:
    """Bring the registry schema to ``revision`` (default: the newest this featurelake knows)."""
    script = ScriptDirectory.from_config(_config())
    known = {rev.revision for rev in script.walk_revisions()}
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise unavailable(uri, exc, "read its schema version") from exc
    except DatabaseError as exc:  # SQLite: "file is not a database"
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ConfigError(
            f"model registry {safe_uri(uri)} cannot be read ({reason}): the file is damaged or is not a registry; "
            "featurelake leaves it as it is: restore it from a backup, or point registry.uri "
            "(FEATURELAKE_REGISTRY__URI) at the registry's database"
        ) from exc
    if current is not None and current not in known:
        raise ConfigError(
            f"model registry {safe_uri(uri)} has schema revision {current}, which this featurelake does not know "
            f"(newest known: {script.get_current_head()}): it was upgraded by a newer featurelake; upgrade this one"
        )
    target = script.get_current_head() if revision == "head" else revision
    if current == target:
        return
    cfg = _config()
    try:
        with write(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as exc:
        raise unavailable(uri, exc, "upgrade its schema") from exc
