"""The local metrics state: a small SQLite time series of every sample jobs recorded, plus alert states.

Batch jobs end before any scrape, so each one appends its updates here; ``featurelake monitor`` evaluates the
alert rules over this file with Prometheus semantics (counters are cumulative across runs, ``increase`` over a
window is the difference of the values at both ends) and needs no Prometheus server.

Samples are stored as Prometheus exposes them: a counter ``x_total``, a gauge ``x``, a histogram as
``x_bucket{le=…}``, ``x_sum`` and ``x_count``. Writes are serialised by SQLite's write lock, so concurrent jobs
add to counters without losing increments. A sample's time is read under that lock, and a sample stamped by
the clock is never stamped before the previous sample of its series: "the value at time t" is the newest
sample at or before t, so a counter value stamped earlier than the value it added to (a clock that stepped
back, e.g. an NTP correction between two writers) would hide the increment.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from featurelake.errors import ConfigError

LabelKey = tuple[tuple[str, str], ...]

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    metric TEXT NOT NULL,
    sample TEXT NOT NULL,
    labels TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    last_value REAL NOT NULL,
    last_ts REAL NOT NULL,
    UNIQUE (sample, labels)
);
CREATE TABLE IF NOT EXISTS samples (series_id INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_by_series ON samples (series_id, ts);
CREATE TABLE IF NOT EXISTS alerts (
    rule TEXT NOT NULL,
    labels TEXT NOT NULL,
    state TEXT NOT NULL,
    active_since REAL NOT NULL,
    fired_at REAL,
    last_notified REAL,
    value REAL,
    PRIMARY KEY (rule, labels)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
    sample TEXT NOT NULL,
    labels TEXT NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (sample, labels)
);
"""

#: 2: ``notes`` (which run a gauge's latest value came from); the tables of 1 are kept as they are.
SCHEMA_VERSION = 2

#: Where sample times come from when the caller gives none (tests replace it to step the clock back).
_clock = time.time

#: Pruning old samples is a table scan: do it at most this often.
PRUNE_EVERY_SECONDS = 3600.0


def label_key(labels: dict[str, str] | LabelKey) -> LabelKey:
    """Canonical, hashable form of a label set (sorted by name)."""
    items = labels.items() if isinstance(labels, dict) else labels
    return tuple(sorted((str(k), str(v)) for k, v in items))


def _dump(key: LabelKey) -> str:
    return json.dumps(dict(key), separators=(",", ":"), sort_keys=True)


def _load(text: str) -> LabelKey:
    return label_key(json.loads(text))


@dataclass(frozen=True)
class Update:
    """One change to one sample: add ``value`` to a cumulative sample, or set a gauge to it."""

    op: Literal["inc", "set"]
    metric: str
    sample: str
    labels: LabelKey
    value: float
    kind: str
    note: str | None = None
    """Where a gauge's value came from (JSON, e.g. the run id), shown with alerts on it."""


@dataclass(frozen=True)
class SeriesRow:
    """The latest value of one stored sample series."""

    metric: str
    sample: str
    labels: LabelKey
    kind: str
    source: str
    value: float
    ts: float


@dataclass
class AlertState:
    """What ``monitor`` remembers about one alert instance between evaluations."""

    rule: str
    labels: LabelKey
    state: Literal["pending", "firing"]
    active_since: float
    fired_at: float | None = None
    last_notified: float | None = None
    value: float | None = None


class MetricsState:
    """The SQLite file holding a project's metric samples and alert states."""

    def __init__(self, path: Path, *, retention_seconds: float = 8 * 86400, timeout: float = 30.0) -> None:
        self.path = path
        self.retention_seconds = retention_seconds
        self.timeout = timeout

    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            # WAL + synchronous=NORMAL: a commit is an append without fsync, so a job's flush costs
            # well under a millisecond; a power cut may lose the last samples, never corrupt the file.
            con.execute("PRAGMA synchronous=NORMAL")
            if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(SCHEMA)
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if write:
                # Take the write lock before reading the counters we add to: no lost increments.
                con.execute("BEGIN IMMEDIATE")
            yield con
            if write:
                con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if "not a database" not in str(exc):
                raise
            raise ConfigError(
                f"metrics state {self.path} (monitoring.state) cannot be read ({exc}): it is damaged or is not a "
                "metrics state; featurelake leaves it as it is: move it aside and a new one starts empty "
                "(counters start again from zero, and rules over a window wait for new samples)"
            ) from exc
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    # --- metric samples ----------------------------------------------------------------------------
    def record(self, updates: Iterable[Update], source: str, ts: float | None = None) -> int:
        """Apply ``updates`` at time ``ts`` (default now) in one transaction; returns samples written."""
        merged: dict[tuple[str, LabelKey], Update] = {}
        for u in updates:
            key = (u.sample, u.labels)
            prev = merged.get(key)
            if prev is not None and u.op == "inc" and prev.op == "inc":
                u = Update("inc", u.metric, u.sample, u.labels, prev.value + u.value, u.kind)
            merged[key] = u
        if not merged:
            return 0
        with self._connect(write=True) as con:
            # The time is read under the write lock: a writer that waited for the lock must not stamp its
            # (newer) counter value earlier than the value it added to, or "latest sample" reads lose it.
            now = _clock() if ts is None else ts
            for (sample, labels), u in merged.items():
                text = _dump(labels)
                row = con.execute(
                    "SELECT id, last_value, last_ts FROM series WHERE sample = ? AND labels = ?",
                    (sample, text),
                ).fetchone()
                at = now
                if row is None:
                    value = u.value
                    cur = con.execute(
                        "INSERT INTO series (metric, sample, labels, kind, source, last_value, last_ts) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (u.metric, sample, text, u.kind, source, value, now),
                    )
                    series_id = cur.lastrowid
                else:
                    series_id, last, last_ts = row
                    value = last + u.value if u.op == "inc" else u.value
                    if ts is None:
                        # Never before the value this one follows (ties go to the later row): a clock that
                        # stepped back must not hide this sample behind the previous one.
                        at = max(now, float(last_ts))
                    con.execute(
                        "UPDATE series SET last_value = ?, last_ts = max(last_ts, ?), source = ? WHERE id = ?",
                        (value, at, source, series_id),
                    )
                con.execute("INSERT INTO samples VALUES (?, ?, ?)", (series_id, at, value))
                if u.note is not None:
                    con.execute("INSERT OR REPLACE INTO notes VALUES (?, ?, ?)", (sample, text, u.note))
            self._maybe_prune(con, now)
        return len(merged)

    def _maybe_prune(self, con: sqlite3.Connection, now: float) -> None:
        row = con.execute("SELECT value FROM meta WHERE key = 'last_prune'").fetchone()
        if row is not None and now - float(row[0]) < PRUNE_EVERY_SECONDS:
            return
        cutoff = now - self.retention_seconds
        # Keep, per series, the newest sample older than the cutoff: it is the baseline of any window
        # that starts before the cutoff, so increase() over it stays exact.
        con.execute(
            """
            DELETE FROM samples WHERE ts < :cutoff AND rowid NOT IN (
                SELECT (SELECT s2.rowid FROM samples s2 WHERE s2.series_id = old.series_id AND s2.ts < :cutoff
                        ORDER BY s2.ts DESC, s2.rowid DESC LIMIT 1)
                FROM (SELECT DISTINCT series_id FROM samples WHERE ts < :cutoff) AS old
            )
            """,
            {"cutoff": cutoff},
        )
        con.execute("INSERT OR REPLACE INTO meta VALUES ('last_prune', ?)", (str(now),))

    def values_at(self, sample: str, t: float) -> dict[LabelKey, float]:
        """The value of every series of ``sample`` as of time ``t`` (its newest sample at or before ``t``)."""
        if not self.exists:
            return {}
        with self._connect(write=False) as con:
            rows = con.execute(
                """
                SELECT s.labels, x.value FROM series s JOIN samples x ON x.rowid = (
                    SELECT rowid FROM samples WHERE series_id = s.id AND ts <= ? ORDER BY ts DESC, rowid DESC
                    LIMIT 1)
                WHERE s.sample = ?
                """,
                (t, sample),
            ).fetchall()
        return {_load(labels): float(value) for labels, value in rows}

    def notes(self, sample: str) -> dict[LabelKey, str]:
        """The note recorded with the latest value of each series of ``sample`` (e.g. which run set it)."""
        if not self.exists:
            return {}
        with self._connect(write=False) as con:
            rows = con.execute("SELECT labels, note FROM notes WHERE sample = ?", (sample,)).fetchall()
        return {_load(labels): str(note) for labels, note in rows}

    def latest(self, *, exclude_sources: Iterable[str] = ()) -> list[SeriesRow]:
        """The newest value of every stored series (what a Pushgateway push carries)."""
        if not self.exists:
            return []
        skip = set(exclude_sources)
        with self._connect(write=False) as con:
            rows = con.execute(
                "SELECT metric, sample, labels, kind, source, last_value, last_ts FROM series ORDER BY id"
            ).fetchall()
        return [
            SeriesRow(m, s, _load(lbl), k, src, float(v), float(ts))
            for m, s, lbl, k, src, v, ts in rows
            if src not in skip
        ]

    def sample_count(self) -> int:
        if not self.exists:
            return 0
        with self._connect(write=False) as con:
            return int(con.execute("SELECT count(*) FROM samples").fetchone()[0])

    # --- alert states --------------------------------------------------------------------------------
    def alert_states(self) -> dict[tuple[str, LabelKey], AlertState]:
        if not self.exists:
            return {}
        with self._connect(write=False) as con:
            rows = con.execute(
                "SELECT rule, labels, state, active_since, fired_at, last_notified, value FROM alerts"
            ).fetchall()
        out: dict[tuple[str, LabelKey], AlertState] = {}
        for rule, labels, state, since, fired, notified, value in rows:
            key = _load(labels)
            out[(rule, key)] = AlertState(rule, key, state, since, fired, notified, value)
        return out

    def save_alert_states(
        self, upserts: Iterable[AlertState], deletes: Iterable[tuple[str, LabelKey]]
    ) -> None:
        with self._connect(write=True) as con:
            for rule, labels in deletes:
                con.execute("DELETE FROM alerts WHERE rule = ? AND labels = ?", (rule, _dump(labels)))
            for a in upserts:
                con.execute(
                    "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        a.rule,
                        _dump(a.labels),
                        a.state,
                        a.active_since,
                        a.fired_at,
                        a.last_notified,
                        a.value,
                    ),
                )


__all__ = ["AlertState", "LabelKey", "MetricsState", "SeriesRow", "Update", "label_key"]
