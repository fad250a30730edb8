"""The embedded online store: one SQLite file (WAL mode, so the server reads while a sync writes)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from featurelake.errors import OnlineStoreUnavailableError
from featurelake.serving.base import OnlineStore, Records, Stored, Watermark

if TYPE_CHECKING:
    from featurelake.config import ProjectConfig

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_values (
    view     TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    event_ts INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    payload  TEXT    NOT NULL,
    PRIMARY KEY (view, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_watermarks (
    view      TEXT PRIMARY KEY,
    watermark TEXT NOT NULL
);
"""

# The whole (event_ts, seq) rule runs inside SQLite's upsert, atomically per row.
_UPSERT = """
INSERT INTO online_values (view, key, event_ts, seq, payload) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (view, key) DO UPDATE SET
    event_ts = excluded.event_ts, seq = excluded.seq, payload = excluded.payload
WHERE excluded.event_ts > online_values.event_ts
   OR (excluded.event_ts = online_values.event_ts AND excluded.seq > online_values.seq)
"""
_REPLACE = """
INSERT INTO online_values (view, key, event_ts, seq, payload) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (view, key) DO UPDATE SET
    event_ts = excluded.event_ts, seq = excluded.seq, payload = excluded.payload
"""
# One parameter however many keys: SQLite caps the number of bound variables per statement.
_READ = """
SELECT key, event_ts, payload FROM online_values
WHERE view = ? AND key IN (SELECT value FROM json_each(?))
"""


class SqliteStore(OnlineStore):
    """Online store in a local SQLite file; one connection per thread."""

    type_name = "sqlite"

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._initialised = False

    @classmethod
    def from_config(cls, config: ProjectConfig) -> SqliteStore:
        return cls(config.path(config.settings.online_store.path))

    @property
    def location(self) -> str:
        return str(self.path)

    # --- connections ----------------------------------------------------------------------------------
    def _unavailable(self, exc: Exception) -> OnlineStoreUnavailableError:
        return OnlineStoreUnavailableError(
            f"online store {self.path} (sqlite) is unavailable: {exc}; check that the file is writable "
            "and not locked by another process, or set online_store.path"
        )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous = NORMAL")
            # Switching to WAL (persistent, once per file) ignores the busy timeout: with several threads or
            # processes opening the store at once it fails with "database is locked". Do it once per store
            # under a lock, retrying while another process holds the file, until the timeout.
            with self._lock:
                if not self._initialised:
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
        rows = zip(
            [view] * len(records), records.keys, records.event_ts, records.seqs, records.payloads, strict=True
        )

        def go(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_REPLACE if force else _UPSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return conn.total_changes - before

        return self._run(go)

    def delete(self, view: str, keys: Sequence[str]) -> int:
        def go(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM online_values WHERE view = ? AND key IN (SELECT value FROM json_each(?))",
                (view, json.dumps(list(keys))),
            )
            return cur.rowcount

        return self._run(go)

    def read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[Stored]]:
        def go(conn: sqlite3.Connection) -> list[list[Stored]]:
            out: list[list[Stored]] = []
            for view, keys in requests:
                found = {k: (ts, p) for k, ts, p in conn.execute(_READ, (view, json.dumps(list(keys))))}
                out.append([found.get(k) for k in keys])
            return out

        return self._run(go)

    def keys(self, view: str) -> Iterator[str]:
        rows = self._run(
            lambda conn: conn.execute("SELECT key FROM online_values WHERE view = ?", (view,)).fetchall()
        )
        return iter(r[0] for r in rows)

    def count(self, view: str) -> int:
        row = self._run(
            lambda conn: conn.execute("SELECT count(*) FROM online_values WHERE view = ?", (view,)).fetchone()
        )
        return int(row[0])

    def get_watermark(self, view: str) -> Watermark | None:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT watermark FROM sync_watermarks WHERE view = ?", (view,)
            ).fetchone()
        )
        return Watermark.from_dict(json.loads(row[0])) if row else None

    def set_watermark(self, view: str, watermark: Watermark) -> None:
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO sync_watermarks (view, watermark) VALUES (?, ?) "
                "ON CONFLICT (view) DO UPDATE SET watermark = excluded.watermark",
                (view, json.dumps(watermark.to_dict())),
            )
        )

    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


__all__ = ["SqliteStore"]
