"""The push write-ahead buffer: acknowledged offline rows on local disk until their micro-batch is published.

One SQLite database, ``<push.buffer>/buffer.db`` (default ``.featurelake/push/buffer.db``), in WAL mode with
``synchronous=FULL``: every :meth:`PushBuffer.append` is one transaction whose commit fsyncs the WAL before it
returns, so a push is acknowledged only once its rows are on disk. An entry is one push's rows (already
conformed to the view's table) as Arrow IPC bytes, with the view, the row count and when it arrived; ids
only grow (``AUTOINCREMENT``), so entries are replayed in arrival order.

The flusher (``streaming/push.py``) reads a view's oldest entries, publishes them as one micro-batch and then
removes them. A crash before the removal leaves them here and they are published again on the next start:
the micro-batch writer drops rows whose (key, event timestamp) main already holds, so they land once.

Several processes (``featurelake serve --workers N``) share the file through SQLite's own locking; only one
of them flushes at a time (:meth:`PushBuffer.flush_lock`, an exclusive ``flock`` on ``flush.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from featurelake.errors import ConfigError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    view TEXT NOT NULL,
    rows INTEGER NOT NULL,
    created REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_view ON entries (view, id);
"""


@dataclass(frozen=True)
class Pending:
    """A view's buffered rows: how many, in how many entries, and when the oldest arrived (epoch seconds)."""

    view: str
    rows: int
    entries: int
    oldest: float


@dataclass(frozen=True)
class Batch:
    """Entries of one view read for a micro-batch: their rows in arrival order and the last entry's id."""

    view: str
    rows: pa.Table
    last_id: int
    entries: int


def _encode(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


def _decode(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class PushBuffer:
    """The write-ahead buffer in ``directory`` (created if missing); thread-safe, shareable by processes."""

    def __init__(self, directory: Path, *, timeout: float = 10.0) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = self.directory / "buffer.db"
            conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            if "not a database" not in str(exc):
                raise ConfigError(
                    f"cannot open the push buffer in {self.directory} ({exc}): push.buffer must name a writable "
                    "local directory"
                ) from exc
            raise ConfigError(
                f"push buffer {self.directory / 'buffer.db'} is not an SQLite database ({exc}): it was damaged or "
                "replaced; move it aside (featurelake leaves it as it is) and start again, or point push.buffer "
                "(FEATURELAKE_PUSH__BUFFER) at another directory"
            ) from exc
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the push buffer in {self.directory} ({exc}): push.buffer must name a writable "
                "local directory"
            ) from exc
        self._conn = conn
        self._lock = threading.Lock()

    def _run(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        with self._lock:
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise ConfigError(f"push buffer {self.path}: could not {what} ({exc})") from exc

    def append(self, view: str, rows: pa.Table) -> int:
        """Store ``rows`` of ``view`` durably (fsynced when this returns); returns the entry's id."""
        data = _encode(rows)

        def go(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO entries (view, rows, created, data) VALUES (?, ?, ?, ?)",
                (view, rows.num_rows, time.time(), data),
            )
            return int(cur.lastrowid or 0)

        return self._run(go, f"store {rows.num_rows} rows of {view}")

    def pending(self) -> list[Pending]:
        """Every view with buffered rows."""
        rows = self._run(
            lambda c: c.execute(
                "SELECT view, SUM(rows), COUNT(*), MIN(created) FROM entries GROUP BY view ORDER BY view"
            ).fetchall(),
            "list buffered rows",
        )
        return [Pending(v, int(n), int(e), float(t)) for v, n, e, t in rows]

    def take(self, view: str, max_rows: int) -> Batch | None:
        """The oldest entries of ``view`` holding at most ``max_rows`` rows (at least one entry), or None."""

        def go(conn: sqlite3.Connection) -> list[tuple[int, int, bytes]]:
            picked: list[tuple[int, int, bytes]] = []
            total = 0
            for entry_id, n, data in conn.execute(
                "SELECT id, rows, data FROM entries WHERE view = ? ORDER BY id", (view,)
            ):
                if picked and total + n > max_rows:
                    break
                picked.append((entry_id, n, data))
                total += n
            return picked

        picked = self._run(go, f"read buffered rows of {view}")
        if not picked:
            return None
        tables = [_decode(data) for _, _, data in picked]
        first = tables[0].schema
        rows = pa.concat_tables([t.cast(first) if not t.schema.equals(first) else t for t in tables])
        return Batch(view, rows, picked[-1][0], len(picked))

    def remove(self, view: str, up_to_id: int) -> int:
        """Forget ``view``'s entries with ids up to ``up_to_id`` (their micro-batch is published)."""
        return self._run(
            lambda c: c.execute("DELETE FROM entries WHERE view = ? AND id <= ?", (view, up_to_id)).rowcount,
            f"remove published rows of {view}",
        )

    @contextlib.contextmanager
    def flush_lock(self, *, wait: bool = False) -> Iterator[bool]:
        """Yields True while this process holds the exclusive flush lock, False if another one holds it
        (``wait``: until the other one lets go, then True)."""
        fd = os.open(self.directory / "flush.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


__all__ = ["Batch", "Pending", "PushBuffer"]
