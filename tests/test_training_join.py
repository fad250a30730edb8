"""The point-in-time join against a brute-force reference: property-based (hypothesis) and pinned cases.

The reference reads the rule straight from its definition: for each entity row, among the feature rows with
the same key, ``event_ts <= t`` and ``t - event_ts <= ttl``, take the latest; among rows sharing that time,
the greatest by feature values (nulls lowest). No row may be dropped, added or reordered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurelake.training import ViewFrame, fingerprint, join, point_in_time_join

T0 = datetime(2024, 3, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000


def ts_array(hours: list[int], unit: str = "us", tz: str = "UTC") -> pa.Array:
    us = [T0 + timedelta(hours=h) for h in hours]
    return pa.array(us, pa.timestamp("us", tz="UTC")).cast(pa.timestamp(unit, tz=tz))


def feature_table(rows: Sequence[tuple[int, int, float | None, int | None]]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "event_ts": ts_array([r[1] for r in rows]),
            "f1": pa.array([r[2] for r in rows], pa.float64()),
            "f2": pa.array([r[3] for r in rows], pa.int64()),
        }
    )


def view(data: pa.Table, ttl_hours: int | None, name: str = "v") -> ViewFrame:
    return ViewFrame(
        name=name,
        entity_key="user_id",
        key="user_id",
        timestamp_field="event_ts",
        features=("f1", "f2"),
        output_names=(f"{name}_f1", f"{name}_f2"),
        ttl=timedelta(hours=ttl_hours) if ttl_hours is not None else None,
        data=data,
        tie_order=("f1", "f2"),
    )


def _key(v: Any) -> tuple[Any, ...]:
    if v is None:
        return (0,)
    if isinstance(v, float) and math.isnan(v):
        return (2,)
    return (1, v)


def reference(
    entities: list[tuple[int | None, int]], rows: list[tuple[int, int, Any, Any]], ttl_hours: int | None
) -> list[tuple[Any, Any]]:
    return [(f1, f2) for _, f1, f2 in reference_rows(entities, rows, ttl_hours)]


def reference_rows(
    entities: list[tuple[int | None, int]], rows: list[tuple[int, int, Any, Any]], ttl_hours: int | None
) -> list[tuple[bool, Any, Any]]:
    """(found, f1, f2) per entity row."""
    out: list[tuple[bool, Any, Any]] = []
    for key, t in entities:
        cands = [
            r
            for r in rows
            if key is not None and r[0] == key and r[1] <= t and (ttl_hours is None or t - r[1] <= ttl_hours)
        ]
        if not cands:
            out.append((False, None, None))
            continue
        latest = max(r[1] for r in cands)
        best = max((r for r in cands if r[1] == latest), key=lambda r: (_key(r[2]), _key(r[3])))
        out.append((True, best[2], best[3]))
    return out


feature_rows = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.integers(0, 40),
        st.one_of(st.none(), st.integers(-5, 5).map(float)),
        st.one_of(st.none(), st.integers(0, 3)),
    ),
    max_size=40,
)
entity_rows = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 5)), st.integers(-3, 45)), max_size=30)
ttls = st.one_of(st.none(), st.integers(0, 12))
units = st.sampled_from([("us", "UTC"), ("ns", "UTC"), ("ms", "Europe/Berlin"), ("s", "America/New_York")])


def entity_table(entities: list[tuple[int | None, int]], unit: str = "us", tz: str = "UTC") -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([e[0] for e in entities], pa.int64()),
            "event_timestamp": ts_array([e[1] for e in entities], unit, tz),
            "label": pa.array(list(range(len(entities))), pa.int64()),
        }
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=feature_rows, entities=entity_rows, ttl=ttls, unit=units)
def test_join_matches_the_brute_force_reference(
    rows: list[tuple[int, int, Any, Any]],
    entities: list[tuple[int | None, int]],
    ttl: int | None,
    unit: tuple[str, str],
) -> None:
    ents = entity_table(entities, *unit)
    out, stats = point_in_time_join(ents, "event_timestamp", [view(feature_table(rows), ttl)])
    # Exactly one row per entity row, in order, entity columns untouched.
    assert out.num_rows == len(entities)
    assert out.select(ents.column_names).equals(ents)
    got = list(zip(out.column("v_f1").to_pylist(), out.column("v_f2").to_pylist(), strict=True))
    assert got == reference(entities, rows, ttl)
    expected = reference_rows(entities, rows, ttl)
    assert stats.matched["v"] == sum(found for found, _, _ in expected)


@settings(max_examples=40, deadline=None)
@given(rows=feature_rows, rows2=feature_rows, entities=entity_rows, ttl=ttls, ttl2=ttls)
def test_several_views_join_independently(
    rows: list[tuple[int, int, Any, Any]],
    rows2: list[tuple[int, int, Any, Any]],
    entities: list[tuple[int | None, int]],
    ttl: int | None,
    ttl2: int | None,
) -> None:
    ents = entity_table(entities)
    out, _ = point_in_time_join(
        ents, "event_timestamp", [view(feature_table(rows), ttl, "a"), view(feature_table(rows2), ttl2, "b")]
    )
    assert out.column_names == ["user_id", "event_timestamp", "label", "a_f1", "a_f2", "b_f1", "b_f2"]
    a = list(zip(out.column("a_f1").to_pylist(), out.column("a_f2").to_pylist(), strict=True))
    b = list(zip(out.column("b_f1").to_pylist(), out.column("b_f2").to_pylist(), strict=True))
    assert a == reference(entities, rows, ttl)
    assert b == reference(entities, rows2, ttl2)


@settings(max_examples=25, deadline=None)
@given(rows=feature_rows, entities=entity_rows, ttl=ttls, seed=st.randoms(use_true_random=False))
def test_result_does_not_depend_on_feature_row_order(
    rows: list[tuple[int, int, Any, Any]], entities: list[tuple[int | None, int]], ttl: int | None, seed: Any
) -> None:
    shuffled = list(rows)
    seed.shuffle(shuffled)
    ents = entity_table(entities)
    a, _ = point_in_time_join(ents, "event_timestamp", [view(feature_table(rows), ttl)])
    b, _ = point_in_time_join(ents, "event_timestamp", [view(feature_table(shuffled), ttl)])
    assert a.equals(b)


def test_no_future_values_ties_and_the_ttl_boundary() -> None:
    rows = [
        (1, 10, 1.0, 1),  # the past
        (1, 20, 9.0, 9),  # the future for t=15
        (2, 10, 5.0, 0),  # tie at t=10 for key 2: the greater f1 wins
        (2, 10, 7.0, 0),
        (2, 10, None, 3),
        (3, 0, 2.0, 2),  # exactly ttl old at t=6 (kept), older at t=7 (dropped)
    ]
    ents = [(1, 15), (1, 10), (1, 9), (2, 10), (3, 6), (3, 7), (4, 10), (None, 10)]
    out, stats = point_in_time_join(entity_table(ents), "event_timestamp", [view(feature_table(rows), 6)])
    assert out.column("v_f1").to_pylist() == [1.0, 1.0, None, 7.0, 2.0, None, None, None]
    assert stats.ties == {"v": 1}
    assert stats.outside_ttl == {"v": 1}  # (3, 7): a value exists but is 7h old
    assert stats.matched == {"v": 4}


def test_nan_ties_and_string_keys() -> None:
    data = pa.table(
        {
            "k": pa.array(["a", "a", "b"], pa.large_string()),
            "event_ts": ts_array([1, 1, 1]),
            "x": pa.array([float("nan"), 3.0, 1.0]),
        }
    )
    ents = pa.table(
        {"k": pa.array(["a", "b", "zz"], pa.large_string()), "event_timestamp": ts_array([2, 2, 2])}
    )
    vf = ViewFrame("s", "k", "k", "event_ts", ("x",), ("x",), None, data)
    out, _ = point_in_time_join(ents, "event_timestamp", [vf])
    got = out.column("x").to_pylist()
    assert math.isnan(got[0]) and got[1:] == [1.0, None]


def test_empty_inputs_keep_shape() -> None:
    ents = entity_table([(1, 5)])
    out, stats = point_in_time_join(ents, "event_timestamp", [view(feature_table([]), None)])
    assert stats.matched == {"v": 0}
    assert out.num_rows == 1 and out.column("v_f1").to_pylist() == [None]
    empty = entity_table([])
    out, _ = point_in_time_join(empty, "event_timestamp", [view(feature_table([(1, 1, 1.0, 1)]), None)])
    assert out.num_rows == 0 and out.column_names[-2:] == ["v_f1", "v_f2"]
    assert out.schema.field("v_f2").type == pa.int64()


def test_fingerprint_ignores_chunking_and_metadata_but_not_content() -> None:
    t = entity_table([(1, 5), (2, 6), (None, 7), (3, 8)])
    chunked = pa.concat_tables([t.slice(0, 1), t.slice(1, 3)])
    assert chunked.column(0).num_chunks == 2
    assert fingerprint(chunked) == fingerprint(t)
    assert fingerprint(t.replace_schema_metadata({"a": "b"})) == fingerprint(t)
    sliced = t.slice(1)
    rebuilt = pa.Table.from_pylist(sliced.to_pylist(), schema=t.schema)
    assert fingerprint(sliced) == fingerprint(rebuilt)
    assert fingerprint(entity_table([(1, 5), (2, 6), (None, 7), (4, 8)])) != fingerprint(t)


def test_one_microsecond_in_the_future_is_never_used() -> None:
    t = T0 + timedelta(hours=5)
    data = pa.table(
        {
            "user_id": pa.array([1, 1], pa.int64()),
            "event_ts": pa.array(
                [t - timedelta(hours=1), t + timedelta(microseconds=1)], pa.timestamp("us", tz="UTC")
            ),
            "f1": pa.array([1.0, 2.0]),
            "f2": pa.array([1, 2], pa.int64()),
        }
    )
    # Nanosecond entity times: 999 ns after t is still before t + 1 us; exactly t + 1 us sees the new row.
    ns = int(t.timestamp()) * 1_000_000_000
    times = pa.array([ns, ns + 999, ns + 1000], pa.int64())
    ents = pa.table(
        {
            "user_id": pa.array([1, 1, 1], pa.int64()),
            "event_timestamp": times.cast(pa.timestamp("ns", tz="UTC")),
        }
    )
    out, _ = point_in_time_join(ents, "event_timestamp", [view(data, None)])
    assert out.column("v_f1").to_pylist() == [1.0, 1.0, 2.0]


# Composite keys, null keys and times, the statistics, and the join's internal paths forced on small data: a
# tiny code range (keys re-numbered between columns, times replaced by their ranks) and the two-thread sort
# and gather.
composite_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", None]),
        st.sampled_from([0, 1, 2, None]),
        st.one_of(st.integers(0, 40), st.just(None)),
        st.one_of(st.none(), st.integers(-3, 3).map(float)),
        st.one_of(st.none(), st.integers(0, 3)),
    ),
    max_size=40,
)
composite_entities = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", None]), st.sampled_from([0, 1, 2, 3, None]), st.integers(-3, 45)
    ),
    max_size=30,
)
CompositeRow = tuple[str | None, int | None, int | None, float | None, int | None]


def composite_reference(
    entities: list[tuple[str | None, int | None, int]], rows: list[CompositeRow], ttl_hours: int | None
) -> tuple[list[tuple[float | None, int | None]], int, int]:
    """((f, g) per entity row, rows matched, rows whose latest value was older than the ttl)."""
    out: list[tuple[float | None, int | None]] = []
    matched = old = 0
    for name, num, t in entities:
        past = [
            r
            for r in rows
            if name is not None and num is not None and (r[0], r[1]) == (name, num) and r[2] is not None
            and r[2] <= t
        ]  # fmt: skip
        if not past:
            out.append((None, None))
            continue
        latest = max(r[2] for r in past if r[2] is not None)
        if ttl_hours is not None and t - latest > ttl_hours:
            old += 1
            out.append((None, None))
            continue
        matched += 1
        best = max((r for r in past if r[2] == latest), key=lambda r: (_key(r[3]), _key(r[4])))
        out.append((best[3], best[4]))
    return out, matched, old


@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced-paths"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=composite_rows, entities=composite_entities, ttl=ttls)
def test_composite_keys_nulls_and_statistics_match_the_reference(
    monkeypatch: pytest.MonkeyPatch,
    forced: bool,
    rows: list[CompositeRow],
    entities: list[tuple[str | None, int | None, int]],
    ttl: int | None,
) -> None:
    if forced:
        monkeypatch.setattr(join, "_LIMIT", 8)
        monkeypatch.setattr(join, "_PARALLEL_SORT_ROWS", 2)
        monkeypatch.setattr(join, "_PARALLEL_TAKE_ROWS", 1)
    data = pa.table(
        {
            "name": pa.array([r[0] for r in rows], pa.string()),
            "num": pa.array([r[1] for r in rows], pa.int32()),
            "event_ts": pa.array(
                [None if r[2] is None else T0 + timedelta(hours=r[2]) for r in rows],
                pa.timestamp("us", "UTC"),
            ),
            "f": pa.array([r[3] for r in rows], pa.float64()),
            "g": pa.array([r[4] for r in rows], pa.int64()),
        }
    )
    ents = pa.table(
        {
            "name": pa.array([e[0] for e in entities], pa.string()),
            "num": pa.array([e[1] for e in entities], pa.int32()),
            "event_timestamp": ts_array([e[2] for e in entities]),
        }
    )
    vf = ViewFrame(
        name="c",
        entity_key=("name", "num"),
        key=("name", "num"),
        timestamp_field="event_ts",
        features=("f", "g"),
        output_names=("f", "g"),
        ttl=timedelta(hours=ttl) if ttl is not None else None,
        data=data,
    )
    out, stats = point_in_time_join(ents, "event_timestamp", [vf])
    expected, matched, old = composite_reference(entities, rows, ttl)
    assert list(zip(out.column("f").to_pylist(), out.column("g").to_pylist(), strict=True)) == expected
    assert stats.matched == {"c": matched}
    assert stats.outside_ttl == {"c": old}


def test_minus_zero_and_zero_are_one_key() -> None:
    data = pa.table({"k": pa.array([-0.0, 1.5]), "event_ts": ts_array([1, 1]), "x": pa.array([7, 8])})
    ents = pa.table({"k": pa.array([0.0, -0.0, 1.5, None]), "event_timestamp": ts_array([2, 2, 2, 2])})
    out, stats = point_in_time_join(
        ents, "event_timestamp", [ViewFrame("z", "k", "k", "event_ts", ("x",), ("x",), None, data)]
    )
    assert out.column("x").to_pylist() == [7, 7, 8, None]
    assert stats.matched == {"z": 3}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
int_keys = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from([INT64_MIN, INT64_MIN + 1, INT64_MAX - 1, INT64_MAX, 2**40]),
)


@settings(max_examples=300, deadline=None)
@given(
    feature_keys=st.lists(int_keys, min_size=1, max_size=25),
    entity_keys=st.lists(int_keys, max_size=25),
    types=st.sampled_from(
        [
            (pa.int64(), pa.int64()),
            (pa.int32(), pa.int64()),
            (pa.int64(), pa.int16()),
            (pa.uint64(), pa.uint64()),
        ]
    ),
)
def test_integer_keys_coded_by_value_match_the_hash_encoding(
    feature_keys: list[int | None], entity_keys: list[int | None], types: tuple[pa.DataType, pa.DataType]
) -> None:
    # Integer keys in a short range are coded as value minus the smallest (no hashing); the codes must
    # pair exactly the rows the hash encoding pairs: equal values, never a null, never a value the view
    # lacks, whatever the widths, signs and extremes (a value minus the smallest may wrap in int64).
    def fits(v: int | None, t: pa.DataType) -> bool:
        info = (
            (-(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1)
            if pa.types.is_signed_integer(t)
            else (0, 2**t.bit_width - 1)
        )
        return v is None or info[0] <= v <= info[1]

    data = pa.array([v if fits(v, types[0]) else None for v in feature_keys], types[0])
    entity = pa.array([v if fits(v, types[1]) else None for v in entity_keys], types[1])

    def pairs(codes: tuple[Any, Any, int]) -> list[frozenset[int]]:
        e, f, _ = codes
        return [frozenset(j for j, fc in enumerate(f) if ec >= 0 and fc == ec) for ec in e]

    direct = join._encode_integers(entity, data)
    hashed = pc_encode(entity, data)
    if direct is not None:
        assert pairs(direct) == pairs(hashed)
        assert all(c == -1 for c, v in zip(direct[1], data.to_pylist(), strict=True) if v is None)
    assert pairs(join._encode("v", entity, data)) == pairs(hashed)  # whichever path it takes


def pc_encode(entity: pa.Array, data: pa.Array) -> tuple[Any, Any, int]:
    """The hash encoding (``_encode`` without its integer shortcut)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(data)
    found = pc.index_in(entity, value_set=encoded.dictionary)
    return join._codes(found), join._codes(encoded.indices), len(encoded.dictionary)


def test_sparse_integer_keys_keep_the_hash_encoding() -> None:
    # A range much longer than the rows would cost memory per value of the range: hashed instead.
    data = pa.array([1, 10**12, 5], pa.int64())
    assert join._encode_integers(pa.array([5, 1], pa.int64()), data) is None
    e, f, n = join._encode("v", pa.array([5, 7, None], pa.int64()), data)
    assert n == 3 and list(e) == [f[2], -1, -1]
