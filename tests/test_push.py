"""``POST /push`` on a real ``featurelake serve`` with a real Redis online store: online writes visible to the
next lookup, offline rows published in micro-batches through WAP, bad bodies refused naming the view and
column, refused micro-batches kept aside, and the write-ahead buffer surviving SIGKILL."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

import featurelake
from featurelake.lakehouse import lineage, wap
from featurelake.streaming.buffer import PushBuffer
from featurelake.streaming.microbatch import REJECTED_TABLE
from featurelake.streaming.push import BUFFER_ID
from tests.online_helpers import project
from tests.redis_server import fresh_db, redis_session_fixture, redis_url_fixture
from tests.server_process import ServeProcess

_FIXTURES = (redis_session_fixture, redis_url_fixture)
pytestmark = pytest.mark.redis

VIEW = "user_features"
TOKEN = "push-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Event times within the view's 7-day ttl, so lookups answer PRESENT.
NOW = datetime.now(UTC).replace(microsecond=0)


def at(hours_ago: float) -> datetime:
    return NOW - timedelta(hours=hours_ago)


def df(items: Sequence[tuple[int, datetime, float | None]]) -> dict[str, list[Any]]:
    return {
        "user_id": [i[0] for i in items],
        "event_ts": [i[1].isoformat() for i in items],
        "txn_count_1d": [1 for _ in items],
        "amount_sum_1d": [float(i[2] or 0.0) for i in items],
        "amount_avg_1d": [i[2] for i in items],
    }


def push(base: str, items: Sequence[tuple[int, datetime, float | None]], to: str) -> httpx.Response:
    body = {"push_source_name": VIEW, "df": df(items), "to": to}
    return httpx.post(f"{base}/push", json=body, headers=AUTH, timeout=30)


def online(base: str, keys: list[int]) -> dict[int, tuple[float | None, str]]:
    """key -> (amount_avg_1d, status) as ``/get-online-features`` answers."""
    r = httpx.post(
        f"{base}/get-online-features",
        json={"features": [f"{VIEW}:amount_avg_1d"], "entities": {"user_id": keys}},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    _, avg = r.json()["results"]
    return {k: (v, s) for k, v, s in zip(keys, avg["values"], avg["statuses"], strict=True)}


def main_rows(fl: featurelake.Featurelake) -> list[tuple[int, datetime, float | None]]:
    rows = fl.read(VIEW).select(["user_id", "event_ts", "amount_avg_1d"]).to_pylist()
    return sorted((r["user_id"], r["event_ts"], r["amount_avg_1d"]) for r in rows)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll until ``check()`` (a hang guard for a loaded machine, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def push_config(batch_seconds: float, batch_rows: int = 10_000) -> str:
    return f"push:\n  batch_rows: {batch_rows}\n  batch_seconds: {batch_seconds}\n"


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[featurelake.Featurelake, ServeProcess]]:
    """One server (one worker, a token, micro-batches every 0.3 s) for the tests that push new keys each."""
    url = fresh_db(request.getfixturevalue("redis_session"), 3)
    root = tmp_path_factory.mktemp("push")
    fl = project(root / "proj", "redis", url, extra=push_config(0.3))
    log = root / "serve.log"
    try:
        with ServeProcess(fl.project.root, log, "--workers", "1", FEATURELAKE_SERVER__TOKEN=TOKEN) as server:
            yield fl, server
    finally:
        fl.close()


def test_online_push_is_visible_to_the_next_lookup_and_never_goes_back_in_time(
    served: tuple[featurelake.Featurelake, ServeProcess],
) -> None:
    _, server = served
    r = push(server.base, [(101, at(2), 1.5), (102, at(3), 2.5)], "online")
    assert (r.status_code, r.json()) == (200, None)  # Feast's answer
    assert online(server.base, [101, 102, 103]) == {
        101: (1.5, "PRESENT"),
        102: (2.5, "PRESENT"),
        103: (None, "NOT_FOUND"),
    }
    assert push(server.base, [(101, at(5), 9.0)], "online").status_code == 200  # an older event
    assert push(server.base, [(102, at(1), 3.5)], "online").status_code == 200  # a newer one
    assert online(server.base, [101, 102]) == {101: (1.5, "PRESENT"), 102: (3.5, "PRESENT")}


def test_offline_push_lands_in_iceberg_through_wap(
    served: tuple[featurelake.Featurelake, ServeProcess],
) -> None:
    fl, server = served
    r = push(server.base, [(201, at(4), 4.0), (202, at(4), 5.0)], "offline")
    assert r.status_code == 200, r.text
    wait_for("the micro-batch", lambda: {201, 202} <= {k for k, _, _ in main_rows(fl)})
    assert online(server.base, [201]) == {201: (None, "NOT_FOUND")}  # offline only: never written online
    ours = [row for row in main_rows(fl) if row[0] in (201, 202)]
    assert ours == [(201, at(4), 4.0), (202, at(4), 5.0)]
    tbl = fl.project.load_table(VIEW)
    snap = tbl.metadata.snapshot_by_id(wap.main_snapshot_id(tbl))  # type: ignore[arg-type]
    assert snap is not None and snap.summary is not None
    props = snap.summary.additional_properties
    assert props[lineage.OPERATION] == "push" and props[lineage.VIEW] == VIEW and BUFFER_ID in props
    assert props[lineage.PIPELINE_USER] == "test-user"
    assert any(a.run_id == props[lineage.RUN_ID] and a.passed for a in fl.audits(VIEW))


def test_a_refused_micro_batch_keeps_its_rows_aside_and_main_unchanged(
    served: tuple[featurelake.Featurelake, ServeProcess],
) -> None:
    fl, server = served
    wait_for("earlier pushes to publish", lambda: fl.pusher.buffer.pending() == [])
    before = wap.main_snapshot_id(fl.project.load_table(VIEW))
    # The view's null_rate(amount_avg_1d) <= 0.10 check refuses a batch of nulls.
    r = push(server.base, [(301, at(6), None), (302, at(6), None)], "offline")
    assert r.status_code == 200, r.text  # acknowledged: buffered durably; the audit comes later

    def kept() -> list[dict[str, Any]]:
        try:
            return fl.read(f"features.{REJECTED_TABLE}").to_pylist()
        except featurelake.errors.UsageError:  # the table is created by the first refusal
            return []

    wait_for("the refused rows", lambda: len(kept()) == 2)
    assert all("null rate of amount_avg_1d" in row["verdict"] for row in kept())
    assert sorted('"user_id": 301' in row["row"] for row in kept()) == [False, True]
    assert wap.main_snapshot_id(fl.project.load_table(VIEW)) == before
    assert not {301, 302} & {k for k, _, _ in main_rows(fl)}
    wait_for("the buffer to empty", lambda: fl.pusher.buffer.pending() == [])
    assert "refused" in server.output()  # the flusher reports it in the server log


BAD_BODIES = [
    ("malformed json", b'{"push_source_name": ', 400, "not valid JSON"),
    ("not an object", b"[1]", 422, "must be a JSON object"),
    (
        "unknown field",
        b'{"push_source_name": "user_features", "df": {"user_id": [1]}, "rows": 1}',
        422,
        "rows",
    ),
    ("unknown view", b'{"push_source_name": "nope", "df": {"user_id": [1]}}', 404, "no feature view 'nope'"),
    (
        "no df",
        b'{"push_source_name": "user_features"}',
        422,
        '"df" must map each column of view user_features',
    ),
    (
        "uneven columns",
        b'{"push_source_name": "user_features", "df": {"user_id": [1, 2], "event_ts": ["2024-01-05T00:00:00Z"]}}',
        422,
        "equally long",
    ),
    (
        "missing column",
        b'{"push_source_name": "user_features", "df": {"user_id": [1], "event_ts": ["2024-01-05T00:00:00Z"]}}',
        422,
        "rows for view user_features lack column 'txn_count_1d'",
    ),
    (
        "bad flag",
        b'{"push_source_name": "user_features", "df": {"user_id": [1]}, "allow_registry_cache": "yes"}',
        422,
        '"allow_registry_cache" must be true or false',
    ),
    (
        "bad mode",
        b'{"push_source_name": "user_features", "df": {"user_id": [1]}, "to": "disk"}',
        422,
        "'to' must be one of online, offline, online_and_offline",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "needle"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_refused_naming_what_is_wrong(
    served: tuple[featurelake.Featurelake, ServeProcess], case: str, body: bytes, status: int, needle: str
) -> None:
    _, server = served
    r = httpx.post(f"{server.base}/push", content=body, headers=AUTH, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_bad_values_are_refused_naming_the_column(
    served: tuple[featurelake.Featurelake, ServeProcess],
) -> None:
    _, server = served
    body = {
        "push_source_name": VIEW,
        "df": {**df([(401, at(1), 1.0)]), "txn_count_1d": ["x"]},
        "to": "online",
    }
    r = httpx.post(f"{server.base}/push", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 422
    assert "column 'txn_count_1d' of view user_features" in r.json()["detail"]
    assert online(server.base, [401]) == {401: (None, "NOT_FOUND")}  # nothing of a refused push is written


def test_push_needs_the_token(served: tuple[featurelake.Featurelake, ServeProcess]) -> None:
    _, server = served
    body = {"push_source_name": VIEW, "df": df([(501, at(1), 1.0)]), "to": "online"}
    r = httpx.post(f"{server.base}/push", json=body, timeout=30)
    assert r.status_code == 401
    assert online(server.base, [501]) == {501: (None, "NOT_FOUND")}


def test_acknowledged_rows_survive_sigkill_and_land_exactly_once(tmp_path: Path, redis_url: str) -> None:
    """Acks, then SIGKILL before any micro-batch is due; the restarted server publishes every acknowledged
    row exactly once, including rows a crash left in the buffer after their batch was already published."""
    fl = project(tmp_path / "proj", "redis", redis_url, extra=push_config(3600, 1_000_000))
    try:
        # A batch published before the crash whose buffer entry was never removed (the crash window
        # between a publish and the buffer's cleanup): its rows must not come back twice.
        already = [(1, at(30), 0.5), (2, at(30), 0.7)]
        fl.push(VIEW, df(already), to="offline")
        fl.pusher.buffer.append(VIEW, fl.pusher._writer(VIEW)[0].conform(df(already)))
        fl.close()

        pushes = [
            [(1, at(20), 1.0), (2, at(20), 2.0), (3, at(20), 3.0)],
            [(1, at(10), 1.1), (3, at(25), 3.3)],  # user 3: an older event than the one online
            [(1, at(10), 1.1), (2, at(20), 2.0)],  # a client retrying a push it got no answer for
            [(4, at(5), 4.0), (1, at(2), 1.2)],
        ]
        first = ServeProcess(fl.project.root, tmp_path / "first.log", "--workers", "1")
        with first:
            for items in pushes:
                assert push_ok(first.base, items)
            buffer = PushBuffer(fl.project.config.path(".featurelake/push"))
            assert sum(p.rows for p in buffer.pending()) == 2 + sum(len(p) for p in pushes)
            buffer.close()
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=60)
        assert main_rows(fl) == sorted(already)  # nothing of the acknowledged pushes was published

        expected = sorted({(k, ts): (k, ts, v) for items in pushes for k, ts, v in items}.values()) + already
        second = ServeProcess(
            fl.project.root, tmp_path / "second.log", "--workers", "1", FEATURELAKE_PUSH__BATCH_SECONDS="0.2"
        )
        with second:
            buffer = PushBuffer(fl.project.config.path(".featurelake/push"))
            wait_for("the replayed buffer to publish", lambda: buffer.pending() == [])
            buffer.close()
            assert main_rows(fl) == sorted(expected)
            assert online(second.base, [1, 2, 3, 4]) == {
                1: (1.2, "PRESENT"),
                2: (2.0, "PRESENT"),
                3: (3.0, "PRESENT"),
                4: (4.0, "PRESENT"),
            }
    finally:
        fl.close()


def push_ok(base: str, items: Sequence[tuple[int, datetime, float | None]]) -> bool:
    r = push(base, items, "online_and_offline")
    assert r.status_code == 200, r.text
    return True


def test_two_workers_share_the_buffer_and_publish_each_row_once(tmp_path: Path, redis_url: str) -> None:
    """``--workers 2``: pushes may land on either worker; both run a flusher (one flushes at a time), and every row is
    published exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    fl = project(tmp_path / "proj", "redis", redis_url, extra=push_config(0.2, 5))
    try:
        batches = [[(u, at(10 + i), float(u + i)) for u in range(1, 4)] for i in range(12)]
        with ServeProcess(fl.project.root, tmp_path / "serve.log", "--workers", "2") as server:
            with ThreadPoolExecutor(4) as pool:  # concurrent keep-alive-less clients spread over the workers
                codes = list(pool.map(lambda items: push(server.base, items, "offline").status_code, batches))
            assert codes == [200] * len(batches)
            expected = sorted(row for items in batches for row in items)
            wait_for("every pushed row", lambda: len(main_rows(fl)) >= len(expected))
            buffer = PushBuffer(fl.project.config.path(".featurelake/push"))
            wait_for("the buffer to empty", lambda: buffer.pending() == [])
            buffer.close()
            assert main_rows(fl) == expected
    finally:
        fl.close()
