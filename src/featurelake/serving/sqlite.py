"""The embedded online store: one SQLite file (WAL mode, so the server reads while a sync writes).

Rows and watermarks are keyed by the store's scope digest (``serving/scope.py``) as well as the view, so
projects and namespaces sharing one file never see each other's rows; ``online_scopes`` says which project,
namespace and catalog a digest stands for. The tables of the layout before scopes (``online_values``,
``sync_watermarks``) are never read; the first sync of a view removes that view's rows from them, and the
tables themselves once they are empty.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from featurelake.errors import OnlineStoreUnavailableError
from featurelake.serving.base import OnlineStore, Records, Stored, Watermark
from featurelake.serving.scope import StoreScope

if TYPE_CHECKING:
    from featurelake.config import ProjectConfig

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_rows (
    scope    TEXT    NOT NULL,
    view     TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    event_ts INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    payload  TEXT    NOT NULL,
    PRIMARY KEY (scope, view, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_watermarks (
    scope     TEXT NOT NULL,
    view      TEXT NOT NULL,
    watermark TEXT NOT NULL,
    PRIMARY KEY (scope, view)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_newest (
    scope    TEXT    NOT NULL,
    view     TEXT    NOT NULL,
    event_ts INTEGER NOT NULL,
    PRIMARY KEY (scope, view)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_scopes (
    scope       TEXT PRIMARY KEY,
    description TEXT NOT NULL
);
"""

# The whole (event_ts, seq) rule runs inside SQLite's upsert, atomically per row.
_UPSERT = """
INSERT INTO online_rows (scope, view, key, event_ts, seq, payload) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (scope, view, key) DO UPDATE SET
    event_ts = excluded.event_ts, seq = excluded.seq, payload = excluded.payload
WHERE excluded.event_ts > online_rows.event_ts
   OR (excluded.event_ts = online_rows.event_ts AND excluded.seq > online_rows.seq)
"""
_REPLACE = """
INSERT INTO online_rows (scope, view, key, event_ts, seq, payload) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (scope, view, key) DO UPDATE SET
    event_ts = excluded.event_ts, seq = excluded.seq, payload = excluded.payload
"""
# One parameter however many keys: SQLite caps the number of bound variables per statement.
_READ = """
SELECT key, event_ts, payload FROM online_rows
WHERE scope = ? AND view = ? AND key IN (SELECT value FROM json_each(?))
"""
# The view's newest event time written, only ever raised (read by the server's visibility lag gauge).
_NEWEST = """
INSERT INTO online_newest (scope, view, event_ts) VALUES (?, ?, ?)
ON CONFLICT (scope, view) DO UPDATE SET event_ts = max(event_ts, excluded.event_ts)
"""
#: Tables of the layout before scopes (rows keyed by view alone); never read, emptied view by view.
_LEGACY = ("online_values", "sync_watermarks")


class SqliteStore(OnlineStore):
    """Online store in a local SQLite file; one connection per thread."""

    type_name = "sqlite"

    def __init__(self, path: Path, scope: StoreScope, *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.scope = scope
        self._scope = scope.digest
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._initialised = False

    @classmethod
    def from_config(cls, config: ProjectConfig) -> SqliteStore:
        return cls(config.path(config.settings.online_store.path), StoreScope.of(config))

    @property
    def location(self) -> str:
        return str(self.path)

    # --- connections ----------------------------------------------------------------------------------
    def _unavailable(self, exc: Exception) -> OnlineStoreUnavailableError:
        if "not a database" in str(exc):  # damaged, or another file: the store is rebuilt from Iceberg main
            return OnlineStoreUnavailableError(
                f"online store {self.path} (sqlite) is unavailable: {exc}; the file is damaged or is not an online "
                "store: move it aside (featurelake leaves it as it is) and run `featurelake sync` to write the "
                "store again from Iceberg main, or set online_store.path"
            )
        return OnlineStoreUnavailableError(
            f"online store {self.path} (sqlite) is unavailable: {exc}; check that the file is writable "
            "and not locked by another process, or set online_store.path"
        )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            # A file deleted since the schema was created (by hand, or a cleanup) is created again, empty:
            # give it the schema again rather than failing every call with "no such table".
            fresh = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous = NORMAL")
            # Switching to WAL (persistent, once per file) ignores the busy timeout: with several threads or
            # processes opening the store at once it fails with "database is locked". Do it once per store
            # under a lock, retrying while another process holds the file, until the timeout.
            with self._lock:
                if fresh or not self._initialised:
                    self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
                    self._retry_locked(lambda: conn.executescript(_SCHEMA))
                    self._initialised = True
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _retry_locked(self, fn: Callable[[], object]) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fn()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    # --- OnlineStore ----------------------------------------------------------------------------------
    def write(self, view: str, records: Records, *, force: bool = False) -> int:
        n = len(records)
        rows = zip(
            [self._scope] * n,
            [view] * n,
            records.keys,
            records.event_ts,
            records.seqs,
            records.payloads,
            strict=True,
        )

        def go(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_REPLACE if force else _UPSERT, rows)
                changed = conn.total_changes - before
                if n:
                    conn.execute(_NEWEST, (self._scope, view, max(records.event_ts)))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return changed

        return self._run(go)

    def delete(self, view: str, keys: Sequence[str]) -> int:
        def go(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM online_rows WHERE scope = ? AND view = ? "
                "AND key IN (SELECT value FROM json_each(?))",
                (self._scope, view, json.dumps(list(keys))),
            )
            return cur.rowcount

        return self._run(go)

    def read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[Stored]]:
        def go(conn: sqlite3.Connection) -> list[list[Stored]]:
            out: list[list[Stored]] = []
            for view, keys in requests:
                found = {
                    k: (ts, p)
                    for k, ts, p in conn.execute(_READ, (self._scope, view, json.dumps(list(keys))))
                }
                out.append([found.get(k) for k in keys])
            return out

        return self._run(go)

    def keys(self, view: str) -> Iterator[str]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT key FROM online_rows WHERE scope = ? AND view = ?", (self._scope, view)
            ).fetchall()
        )
        return iter(r[0] for r in rows)

    def count(self, view: str) -> int:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT count(*) FROM online_rows WHERE scope = ? AND view = ?", (self._scope, view)
            ).fetchone()
        )
        return int(row[0])

    def newest_event_ts(self, view: str) -> int | None:
        def go(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT event_ts FROM online_newest WHERE scope = ? AND view = ?", (self._scope, view)
            ).fetchone()
            if row is not None:
                return int(row[0])
            # Rows written before the marker existed: their newest, kept for the next call.
            (newest,) = conn.execute(
                "SELECT max(event_ts) FROM online_rows WHERE scope = ? AND view = ?", (self._scope, view)
            ).fetchone()
            if newest is not None:
                conn.execute(_NEWEST, (self._scope, view, newest))
            return None if newest is None else int(newest)

        return self._run(go)

    def get_watermark(self, view: str) -> Watermark | None:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT watermark FROM online_watermarks WHERE scope = ? AND view = ?", (self._scope, view)
            ).fetchone()
        )
        return Watermark.from_dict(json.loads(row[0])) if row else None

    def set_watermark(self, view: str, watermark: Watermark) -> None:
        def go(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO online_watermarks (scope, view, watermark) VALUES (?, ?, ?) "
                    "ON CONFLICT (scope, view) DO UPDATE SET watermark = excluded.watermark",
                    (self._scope, view, json.dumps(watermark.to_dict())),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO online_scopes (scope, description) VALUES (?, ?)",
                    (self._scope, json.dumps(asdict(self.scope))),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._run(go)

    # --- the layout before scopes -----------------------------------------------------------------------
    @staticmethod
    def _legacy_tables(conn: sqlite3.Connection) -> list[str]:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return [t for t in _LEGACY if t in names]

    def has_legacy(self, view: str) -> bool:
        def go(conn: sqlite3.Connection) -> bool:
            return any(
                conn.execute(f"SELECT 1 FROM {t} WHERE view = ? LIMIT 1", (view,)).fetchone() is not None
                for t in self._legacy_tables(conn)
            )

        return self._run(go)

    def drop_legacy(self, view: str) -> int:
        def go(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                tables = self._legacy_tables(conn)
                for t in tables:
                    cur = conn.execute(f"DELETE FROM {t} WHERE view = ?", (view,))
                    removed += cur.rowcount if t == "online_values" else 0
                if tables and all(
                    conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() is None for t in tables
                ):
                    for t in tables:  # nothing of the old layout left for any view
                        conn.execute(f"DROP TABLE {t}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return removed

        return self._run(go)

    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


__all__ = ["SqliteStore"]
