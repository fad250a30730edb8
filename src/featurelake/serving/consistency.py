"""Is what the online store serves what Iceberg main says? ``featurelake consistency VIEW`` answers per key.

**Expected values** are what a full sync would write now: main's live data files read through the sync's
own reader (:func:`~featurelake.serving.sync.iter_added`, row-level deletes applied, in parts of
``online_store.sync_batch_rows`` rows) and reduced by the
sync's :class:`~featurelake.serving.sync.Reducer` to the latest row per key by (event time, sequence
number), encoded exactly as the store holds it. Nothing here re-implements that rule.

**Which keys**: ``sample`` keys drawn at random, with ``seed``, from the union of main's keys and the store's
keys of the view (sorted first, so the same seed checks the same keys); ``sample=0`` checks every key.

**Verdict per key** (the view's ttl applies as lookups apply it: a row older than the ttl is served as
nulls, ``OUTSIDE_MAX_AGE``):

===========  ===========================================================================================
consistent   same event time and the same value of every feature
mismatch     same event time, a feature's value differs (the report shows both values)
missing      main has the key, the store does not
stale        the store holds an older event than main's latest
extra        the store has the key, main does not (any more)
ahead        the store holds a newer event than main's latest (a push to the online store only, or a
             stream written online before its Iceberg commit): not an inconsistency
expired      main's latest row (and the store's, if any) is older than the ttl: served as nulls either way,
             so no difference can be seen; not compared
===========  ===========================================================================================

The **mismatch ratio** is (mismatch + missing + stale + extra) / (keys checked - expired): the metric
``featurelake_online_consistency_mismatch_ratio{view, store}`` and the ``online_inconsistent`` alert rule
read it. A store that lags main (a publish not synced yet) shows the unsynced keys as missing or stale: the
report says when main is ahead of the store's sync watermark, so a check right after ``featurelake sync`` is
the one to alert on.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from pyiceberg.types import FloatType

from featurelake.errors import OnlineStoreUnavailableError, UsageError
from featurelake.features.keys import describe_key
from featurelake.serving import codec
from featurelake.serving.sync import Reducer, SyncPlan, SyncProgress, iter_added, key_values, plan_sync

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from featurelake.features.definitions import FeatureView
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore, Stored

#: Verdicts that count as inconsistent (in the mismatch ratio and the exit code).
INCONSISTENT = ("mismatch", "missing", "stale", "extra")
#: Every verdict a key can get, in report order.
VERDICTS = ("consistent", *INCONSISTENT, "ahead", "expired")
DEFAULT_SAMPLE = 1000
_READ_CHUNK = 5000


@dataclass(frozen=True)
class KeyDiff:
    """One key whose online record differs from main's latest row (or that only one side has)."""

    key: Any
    """The key's value; for a composite key ``{column: value}``."""
    text: str
    """The key as written on the command line (``42``, ``user_id=1,merchant_id=7``)."""
    verdict: str
    iceberg_event_ts: datetime | None
    online_event_ts: datetime | None
    differences: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """For a ``mismatch``: feature -> (main's value, the store's value), as stored (JSON values)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "verdict": self.verdict,
            "iceberg_event_ts": self.iceberg_event_ts.isoformat() if self.iceberg_event_ts else None,
            "online_event_ts": self.online_event_ts.isoformat() if self.online_event_ts else None,
            "differences": {f: {"iceberg": a, "online": b} for f, (a, b) in self.differences.items()},
        }


@dataclass
class ConsistencyReport:
    """What one check of one view found (see the module docstring for the verdicts)."""

    view: str
    store: str
    """The store's type (``sqlite``, ``redis``): the metric's ``store`` label."""
    location: str
    snapshot_id: int | None
    """Main's snapshot the store was compared with (None: main has no snapshot)."""
    synced_snapshot_id: int | None
    """The store's sync watermark (None: never synced; keys came from a push or a stream)."""
    iceberg_keys: int
    online_keys: int
    universe: int
    """Keys main or the store has (the population the sample is drawn from)."""
    sample: int
    """Keys asked for (0: all)."""
    seed: int
    counts: dict[str, int]
    """Keys checked per verdict (every verdict present, 0 or not)."""
    diffs: list[KeyDiff]
    """Every checked key with an inconsistent or ``ahead`` verdict, ordered by key value."""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def checked(self) -> int:
        return sum(self.counts.values())

    @property
    def compared(self) -> int:
        """Keys whose values could be told apart (checked minus expired)."""
        return self.checked - self.counts["expired"]

    @property
    def inconsistent(self) -> int:
        return sum(self.counts[v] for v in INCONSISTENT)

    @property
    def mismatch_ratio(self) -> float:
        """Inconsistent keys over compared keys (0.0 when nothing could be compared)."""
        return self.inconsistent / self.compared if self.compared else 0.0

    @property
    def ok(self) -> bool:
        return self.inconsistent == 0

    def of(self, verdict: str) -> list[KeyDiff]:
        return [d for d in self.diffs if d.verdict == verdict]

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "store": self.store,
            "location": self.location,
            "snapshot_id": self.snapshot_id,
            "synced_snapshot_id": self.synced_snapshot_id,
            "iceberg_keys": self.iceberg_keys,
            "online_keys": self.online_keys,
            "universe": self.universe,
            "sample": self.sample,
            "seed": self.seed,
            "checked": self.checked,
            "compared": self.compared,
            "counts": dict(self.counts),
            "inconsistent": self.inconsistent,
            "mismatch_ratio": self.mismatch_ratio,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            **{verdict: [d.to_dict() for d in self.of(verdict)] for verdict in (*INCONSISTENT, "ahead")},
        }

    def summary(self) -> str:
        shown = ", ".join(f"{self.counts[v]} {v}" for v in VERDICTS if self.counts[v] or v == "consistent")
        return (
            f"{self.view} ({self.store}): {self.checked} of {self.universe} keys checked: {shown}; "
            f"mismatch ratio {self.mismatch_ratio:.4g}"
        )


@dataclass(frozen=True)
class _Expected:
    event_ts: int
    payload: str


def _as_dt(micros: int | None) -> datetime | None:
    return None if micros is None else codec.EPOCH + timedelta(microseconds=micros)


def _payload_dict(payload: bytes | str) -> dict[str, Any]:
    data = orjson.loads(payload)
    return data if isinstance(data, dict) else {}


class _Keys:
    """Store keys of one view as typed values (dicts for a composite key) and as command-line text."""

    def __init__(self, table: Table, view: FeatureView) -> None:
        self.table, self.columns = table, list(view.join_keys)

    def typed(self, key: str) -> tuple[Any, str]:
        try:
            value = key_values(self.table, self.columns, [key])[0]
        except ValueError:  # a key main's key type cannot hold (written by something else): as stored
            return key, key
        if len(self.columns) == 1:
            return value, describe_key(self.columns, [value])
        return dict(zip(self.columns, value, strict=True)), describe_key(self.columns, list(value))


def _order(diff: KeyDiff) -> tuple[tuple[int, int, str], ...]:
    """Sort keys by value: integers numerically, before any text (a key main's type cannot hold)."""
    values = diff.key.values() if isinstance(diff.key, dict) else [diff.key]
    return tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in values)


def _expected(
    project: Project, store: OnlineStore, view: FeatureView
) -> tuple[SyncPlan, dict[str, _Expected]]:
    """(the plan, main's latest record per store key) as a full sync would write them now.

    Main is read as the sync reads it, ``online_store.sync_batch_rows`` rows at a time; each part is reduced
    to its latest record per key and merged by (event time, sequence number), so memory holds one record per
    key, never the whole table.
    """
    planned = plan_sync(project, store, view, full=True, progress=SyncProgress())
    if planned.current is None:
        return planned, {}
    best: dict[str, tuple[int, int, str]] = {}
    reducer = Reducer(view.join_keys, view.timestamp_field, planned.types)
    try:
        for part in iter_added(planned, project.config.settings.online_store.sync_batch_rows):
            records = reducer.records(part)
            for k, ts, seq, payload in zip(
                records.keys, records.event_ts, records.seqs, records.payloads, strict=True
            ):
                held = best.get(k)
                if held is None or (ts, seq) > held[:2]:
                    best[k] = (ts, seq, payload)
    finally:
        reducer.close()
    return planned, {k: _Expected(ts, payload) for k, (ts, _, payload) in best.items()}


def _read(store: OnlineStore, view: str, keys: list[str]) -> list[Stored]:
    out: list[Stored] = []
    for start in range(0, len(keys), _READ_CHUNK):
        out += store.read([(view, keys[start : start + _READ_CHUNK])])[0]
    return out


def _same(a: Any, b: Any, single: bool) -> bool:
    """Whether two stored values are one value; for a float32 feature, one float32 (earlier versions stored
    it in its shortest float32 digits, 1.1; now in its exact value's float64 digits, 1.100000023841858)."""
    if a == b:
        return True
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return single and numbers and bool(np.float32(a) == np.float32(b))


def _judge(
    want: _Expected | None,
    hit: Stored,
    ttl_us: int | None,
    now_us: int,
    fields: list[str],
    singles: frozenset[str] = frozenset(),
) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The verdict on one key (see the module docstring), with the differing features of a mismatch."""

    def expired(ts: int) -> bool:
        return ttl_us is not None and now_us - ts > ttl_us

    if want is None:
        assert hit is not None
        return ("expired" if expired(hit[0]) else "extra"), {}
    if hit is None:
        return ("expired" if expired(want.event_ts) else "missing"), {}
    online_ts, payload = hit
    if online_ts > want.event_ts:
        return ("expired" if expired(online_ts) else "ahead"), {}
    if expired(want.event_ts):  # the store's row is no newer: both served as nulls
        return "expired", {}
    if online_ts < want.event_ts:
        return "stale", {}
    expected, stored = _payload_dict(want.payload), _payload_dict(payload)
    diff = {
        f: (expected.get(f), stored.get(f))
        for f in fields
        if not _same(expected.get(f), stored.get(f), f in singles)
    }
    return ("mismatch" if diff else "consistent"), diff


def check_consistency(
    project: Project,
    store: OnlineStore,
    view_name: str,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    now: datetime | None = None,
) -> ConsistencyReport:
    """Compare ``store``'s keys of ``view_name`` with main's latest row per key (see the module docstring).

    ``now`` judges the ttl as of another time (default: now). Raises UsageError for an unknown view, a view
    without a table, or one never synced (nothing to compare); OnlineStoreUnavailableError naming the view
    when the store cannot be reached.
    """
    if sample < 0:
        raise UsageError(f"sample must be 0 (every key) or a positive number of keys, got {sample}")
    view = project.view(view_name)  # unknown: UsageError listing the views
    t0 = time.perf_counter()
    try:
        return _check(project, store, view, sample, seed, now, t0)
    except OnlineStoreUnavailableError as exc:
        raise OnlineStoreUnavailableError(
            f"cannot check the consistency of {view.name}: {exc}; run `featurelake consistency {view.name}` "
            "again once the store answers"
        ) from exc


def _check(
    project: Project,
    store: OnlineStore,
    view: FeatureView,
    sample: int,
    seed: int,
    now: datetime | None,
    t0: float,
) -> ConsistencyReport:
    planned, expected = _expected(project, store, view)
    online = set(store.keys(view.name))
    if planned.watermark is None and not online:
        legacy = (
            " (it holds keys an earlier featurelake wrote in the layout before scopes, which are never served)"
            if planned.legacy
            else ""
        )
        raise UsageError(
            f"view {view.name} was never synced to the online store {store.location} ({store.type_name}){legacy}: "
            f"there is nothing to compare; run `featurelake sync {view.name}` first"
        )
    universe = sorted(set(expected) | online)
    chosen = (
        universe if sample == 0 or sample >= len(universe) else random.Random(seed).sample(universe, sample)
    )
    chosen.sort()
    hits = _read(store, view.name, chosen)
    ttl_us = int(view.ttl.total_seconds() * 1_000_000) if view.ttl else None
    now_us = int((now or datetime.now(UTC)).timestamp() * 1_000_000)
    fields = list(planned.types) if planned.types else list(view.fields)
    singles = frozenset(f for f, t in planned.types.items() if isinstance(t, FloatType))
    keys = _Keys(planned.table, view)
    counts = dict.fromkeys(VERDICTS, 0)
    diffs: list[KeyDiff] = []
    for key, hit in zip(chosen, hits, strict=True):
        want = expected.get(key)
        if want is None and hit is None:  # removed between listing and reading: nothing on either side
            continue
        verdict, differences = _judge(want, hit, ttl_us, now_us, fields, singles)
        counts[verdict] += 1
        if verdict in INCONSISTENT or verdict == "ahead":
            typed, text = keys.typed(key)
            diffs.append(
                KeyDiff(
                    typed,
                    text,
                    verdict,
                    _as_dt(want.event_ts if want else None),
                    _as_dt(hit[0] if hit else None),
                    differences,
                )
            )
    diffs.sort(key=_order)
    report = ConsistencyReport(
        view=view.name,
        store=store.type_name,
        location=store.location,
        snapshot_id=planned.current.snapshot_id if planned.current is not None else None,
        synced_snapshot_id=planned.watermark.snapshot_id if planned.watermark is not None else None,
        iceberg_keys=len(expected),
        online_keys=len(online),
        universe=len(universe),
        sample=sample,
        seed=seed,
        counts=counts,
        diffs=diffs,
    )
    if planned.current is None:
        report.notes.append(
            f"main of {project.table_name(view.name)} has no snapshot: every online key is extra"
        )
    elif report.synced_snapshot_id is None:
        report.notes.append(
            f"the store has no sync watermark for {view.name}: its keys came from pushes or a stream"
        )
    elif report.synced_snapshot_id != report.snapshot_id:
        report.notes.append(
            f"main (snapshot {report.snapshot_id}) is ahead of the last sync (snapshot {report.synced_snapshot_id}): "
            f"keys published since show as missing or stale until `featurelake sync {view.name}` runs"
        )
    report.seconds = time.perf_counter() - t0
    return report


__all__ = [
    "DEFAULT_SAMPLE",
    "INCONSISTENT",
    "VERDICTS",
    "ConsistencyReport",
    "KeyDiff",
    "check_consistency",
]
