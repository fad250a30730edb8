"""The OnlineStore contract, run against every backend: SQLite (a real file) and a real redis-server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurelake.errors import OnlineStoreUnavailableError
from featurelake.serving.base import OnlineStore, Records, Watermark
from featurelake.serving.redis import RedisStore
from featurelake.serving.scope import StoreScope
from featurelake.serving.sqlite import SqliteStore
from tests.redis_server import (
    RedisServer,
    free_port,
    own_redis_fixture,
    redis_session_fixture,
    redis_url_fixture,
)

# Imported for pytest, which finds them by their fixture names.
_FIXTURES = (own_redis_fixture, redis_session_fixture, redis_url_fixture)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def scope(project: str = "contract", namespace: str = "features") -> StoreScope:
    return StoreScope(project, "featurelake", "sqlite:////srv/catalog.db", "file:///srv/warehouse", namespace)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    s: OnlineStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "online.db", scope())
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), scope())
    try:
        yield s
    finally:
        s.close()


def recs(*rows: tuple[str, int, int, str]) -> Records:
    return Records([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])


def payload(store: OnlineStore, view: str, key: str) -> str | None:
    hit = store.read([(view, [key])])[0][0]
    if hit is None:
        return None
    value = hit[1]
    return value.decode() if isinstance(value, bytes) else value


def test_read_many_views_and_keys_in_one_call(store: OnlineStore) -> None:
    store.write("a", recs(("1", 10, 1, '{"x":1}'), ("2", 20, 1, '{"x":2}')))
    store.write("b", recs(("1", 30, 1, '{"y":"one"}')))
    out = store.read([("a", ["2", "missing", "1"]), ("b", ["1", "2"]), ("c", [])])
    assert [[h[0] if h else None for h in part] for part in out] == [[20, None, 10], [30, None], []]
    assert payload(store, "b", "1") == '{"y":"one"}'
    # Same key in two views: independent records.
    assert payload(store, "a", "1") == '{"x":1}'


def test_newer_event_wins_and_stale_history_never_overwrites(store: OnlineStore) -> None:
    assert store.write("v", recs(("k", 100, 5, "v100s5"))) == 1
    # Older event replayed from a newer snapshot: refused.
    assert store.write("v", recs(("k", 90, 9, "v90s9"))) == 0
    assert payload(store, "v", "k") == "v100s5"
    # Newer event from an older snapshot: accepted (event time decides first).
    assert store.write("v", recs(("k", 110, 3, "v110s3"))) == 1
    assert payload(store, "v", "k") == "v110s3"


def test_same_event_newer_snapshot_overwrites_correction(store: OnlineStore) -> None:
    store.write("v", recs(("k", 100, 5, "original")))
    assert store.write("v", recs(("k", 100, 5, "same-seq"))) == 0  # idempotent replay
    assert store.write("v", recs(("k", 100, 4, "older-seq"))) == 0
    assert payload(store, "v", "k") == "original"
    assert store.write("v", recs(("k", 100, 6, "corrected"))) == 1
    assert payload(store, "v", "k") == "corrected"


def test_mixed_batch_counts_only_changed_keys(store: OnlineStore) -> None:
    store.write("v", recs(("a", 10, 1, "a1"), ("b", 10, 1, "b1")))
    changed = store.write("v", recs(("a", 11, 1, "a2"), ("b", 9, 2, "b0"), ("c", 1, 1, "c1")))
    assert changed == 2
    assert [payload(store, "v", k) for k in "abc"] == ["a2", "b1", "c1"]


def test_force_replaces_unconditionally(store: OnlineStore) -> None:
    store.write("v", recs(("k", 100, 9, "new")))
    assert store.write("v", recs(("k", 50, 1, "rewound")), force=True) == 1
    assert store.read([("v", ["k"])])[0][0] is not None
    assert payload(store, "v", "k") == "rewound"
    # After a forced write the rule applies against the forced value.
    assert store.write("v", recs(("k", 60, 1, "later"))) == 1


def test_keys_count_and_delete(store: OnlineStore) -> None:
    store.write("v", recs(*[(f"k{i}", i, 1, "{}") for i in range(25)]))
    store.write("w", recs(("k1", 1, 1, "{}")))
    assert sorted(store.keys("v")) == sorted(f"k{i}" for i in range(25))
    assert store.count("v") == 25 and store.count("w") == 1
    assert store.delete("v", ["k1", "k2", "nope"]) == 2
    assert store.count("v") == 23 and store.count("w") == 1
    assert store.read([("v", ["k1", "k3"])])[0][0] is None


def test_keys_with_glob_characters_are_listed_exactly(store: OnlineStore) -> None:
    store.write("v", recs(("a*[b]?", 1, 1, "{}"), ("plain", 1, 1, "{}")))
    store.write("v2", recs(("x", 1, 1, "{}")))
    assert sorted(store.keys("v")) == ["a*[b]?", "plain"]


def test_watermarks_per_view(store: OnlineStore) -> None:
    assert store.get_watermark("v") is None
    wm = Watermark(
        snapshot_id=123, sequence_number=4, table_uuid="u-1", synced_at="2024-01-01T00:00:00+00:00"
    )
    store.set_watermark("v", wm)
    assert store.get_watermark("v") == wm
    assert store.get_watermark("w") is None
    wm2 = Watermark(
        snapshot_id=456, sequence_number=7, table_uuid="u-1", synced_at="2024-01-02T00:00:00+00:00"
    )
    store.set_watermark("v", wm2)
    assert store.get_watermark("v") == wm2
    # The watermark is not a key of the view.
    assert list(store.keys("v")) == []


def test_concurrent_writers_keep_the_newest_version(store: OnlineStore) -> None:
    """The (event_ts, seq) rule is applied atomically by the store, whatever the interleaving."""
    keys = [f"k{i}" for i in range(200)]
    versions = [(ts, seq) for ts in (1, 2, 3) for seq in (1, 2)]

    def writer(order: list[tuple[int, int]]) -> None:
        for ts, seq in order:
            store.write("v", Records(keys, [ts] * len(keys), [seq] * len(keys), [f"{ts}-{seq}"] * len(keys)))

    threads = [
        threading.Thread(target=writer, args=(o,))
        for o in (versions, versions[::-1], versions[2:] + versions[:2])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {payload(store, "v", k) for k in keys} == {"3-2"}


def test_sqlite_unavailable_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be")
    s = SqliteStore(blocker / "online.db", scope())
    with pytest.raises(OnlineStoreUnavailableError) as info:
        s.write("v", recs(("k", 1, 1, "{}")))
    assert str(blocker / "online.db") in str(info.value) and "online_store.path" in str(info.value)
    assert blocker.read_text().startswith("a file")  # nothing was touched


def test_redis_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    s = RedisStore(url, scope("p"), connect_timeout=0.5)
    for call in (lambda: s.read([("v", ["1"])]), lambda: s.write("v", recs(("k", 1, 1, "{}"))), s.ping):
        with pytest.raises(OnlineStoreUnavailableError) as info:
            call()
        msg = str(info.value)
        assert "unreachable" in msg and "FEATURELAKE_ONLINE_STORE__URL" in msg
        assert "secret" not in msg and "***" in msg


def test_redis_bad_url_is_a_config_problem() -> None:
    with pytest.raises(OnlineStoreUnavailableError, match="not a Redis URL"):
        RedisStore("http://127.0.0.1:1/0", scope("p"))


@pytest.mark.redis
def test_redis_recovers_after_restart_and_reloads_its_script(own_redis: RedisServer) -> None:
    s = RedisStore(own_redis.url, scope("p"))
    s.write("v", recs(("k", 1, 1, "one")))
    own_redis.kill()
    with pytest.raises(OnlineStoreUnavailableError):
        s.read([("v", ["k"])])
    own_redis.start()
    # Same client object: reconnects by itself; the append-only file kept the data, not the Lua script.
    assert payload(s, "v", "k") == "one"
    with own_redis.client() as c:
        c.script_flush()
    assert s.write("v", recs(("k", 2, 1, "two"))) == 1
    assert payload(s, "v", "k") == "two"
    # A restart between writes: the write's pooled connection is stale and its server has no scripts; the
    # write is sent again on a fresh connection and the script loaded again.
    own_redis.kill()
    own_redis.start()
    assert s.write("v", recs(("k", 3, 1, "three"), ("k2", 1, 1, "x"))) == 2
    assert payload(s, "v", "k") == "three"
    s.close()


@pytest.mark.redis
def test_redis_lookups_from_many_threads_each_get_their_own_rows(redis_url: str) -> None:
    """One thread at a time reads on the store's lookup connection, the others through the pool: every
    thread gets the rows it asked for, never another thread's reply."""
    s = RedisStore(redis_url, scope("threads"))
    keys = [f"k{i}" for i in range(40)]
    s.write("v", Records(keys, [1] * len(keys), [1] * len(keys), [f"value of {k}" for k in keys]))
    wrong: list[str] = []

    def reader(offset: int) -> None:
        for i in range(300):
            a, b = keys[(offset + i) % len(keys)], keys[(offset * 7 + i) % len(keys)]
            got = [hit[1] if hit else None for hit in s.read([("v", [a, b])])[0]]
            if got != [f"value of {a}".encode(), f"value of {b}".encode()]:
                wrong.append(f"{a},{b}: {got!r}")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()
    assert wrong == []


@pytest.mark.redis
def test_redis_lookup_timing_out_leaves_no_reply_for_the_next(own_redis: RedisServer) -> None:
    """A lookup that timed out waiting for Redis is an error; its late reply is never taken for the answer
    of the next lookup (the connection it was read on is dropped)."""
    s = RedisStore(own_redis.url, scope("p"), timeout=0.2)
    s.write("v", recs(("a", 1, 1, "A"), ("b", 1, 1, "B")))
    assert payload(s, "v", "a") == "A"
    with own_redis.client() as c:
        c.execute_command("CLIENT", "PAUSE", "1000", "ALL")  # every other client's commands wait 1 s
        with pytest.raises(OnlineStoreUnavailableError, match="unreachable"):
            s.read([("v", ["a"])])
        c.execute_command("CLIENT", "UNPAUSE")
    assert payload(s, "v", "b") == "B"
    assert payload(s, "v", "a") == "A"
    s.close()
