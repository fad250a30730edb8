"""One in-memory DuckDB database per process, handed out as cheap cursors.

``duckdb.connect()`` costs ~12 ms (it builds a new database instance); a cursor on an existing one costs
well under a millisecond. Every cursor is its own connection: registered Arrow tables and temporary views
stay private to it, and cursors may be used from different threads at once. A forked child gets a fresh
database (an inherited instance is not safe to use after ``fork``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

_LOCK = threading.Lock()
_DB: duckdb.DuckDBPyConnection | None = None
_PID: int | None = None


def _database() -> duckdb.DuckDBPyConnection:
    global _DB, _PID
    with _LOCK:
        if _DB is None or os.getpid() != _PID:
            _DB, _PID = duckdb.connect(), os.getpid()
        return _DB


@contextmanager
def cursor() -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh connection to the process's database, in UTC, closed on exit."""
    cur = _database().cursor()
    try:
        cur.execute("SET TimeZone='UTC'")
        yield cur
    finally:
        cur.close()


__all__ = ["cursor"]
