"""Crash tests of ``featurelake ingest`` as a real process on real brokers: SIGKILL mid-batch and restart, twice,
then Iceberg holds every message exactly once and the online store the latest value per key; SIGTERM stops
gracefully (exit 0) after the batch in hand."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import featurelake
from tests.online_helpers import assert_matches_main, project
from tests.redis_server import redis_session_fixture, redis_url_fixture  # noqa: F401
from tests.stream_helpers import (
    IngestProcess,
    NatsServer,
    assert_exactly_once,
    event,
    js_publish,
    nats_server_fixture,  # noqa: F401
    xadd,
)

CONFIG = "ingest:\n  poll_seconds: 0.2\n"
ARGS = ("--batch-rows", "250", "--batch-seconds", "30")
Producer = Callable[[list[dict[str, Any]]], None]


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("nats", marks=pytest.mark.nats)]
)
def stream(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[featurelake.Featurelake, str, Producer]]:
    """An applied project, the URL to ingest from, and a producer to that stream (Redis: online store on the
    same Redis; NATS: online store on SQLite)."""
    name = f"S{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        fl = project(tmp_path / "proj", "redis", redis_url, extra=CONFIG)
        url = f"{redis_url}/{name}"

        def produce(payloads: list[dict[str, Any]]) -> None:
            xadd(redis_url, name, payloads)

    else:
        server: NatsServer = request.getfixturevalue("nats_server")
        fl = project(tmp_path / "proj", "sqlite", extra=CONFIG)
        url = f"{server.url}/{name}.events"

        def produce(payloads: list[dict[str, Any]]) -> None:
            js_publish(server.url, name, f"{name}.events", payloads)

    try:
        yield fl, url, produce
    finally:
        fl.close()


def test_sigkill_mid_batch_then_restart_writes_every_message_once(
    stream: tuple[featurelake.Featurelake, str, Producer],
) -> None:
    fl, url, produce = stream
    rng = random.Random(19)
    produced: list[dict[str, Any]] = []
    stop = threading.Event()

    def producing() -> None:  # the stream keeps flowing while consumers are killed (up to 6,000 messages)
        while not stop.is_set() and len(produced) < 6000:
            chunk = [event(i) for i in range(len(produced), len(produced) + 50)]
            produce(chunk)
            produced.extend(chunk)
            time.sleep(0.02)

    producer = threading.Thread(target=producing, daemon=True)
    producer.start()
    try:
        for _ in range(2):  # killed twice, somewhere inside a batch (fetching, writing, publishing or acking)
            proc = IngestProcess(fl.project.root, url, *ARGS)  # no --until-idle: it consumes until killed
            proc.wait_for_batches(1)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.kill()
            assert proc.proc.returncode == -signal.SIGKILL
    finally:
        stop.set()
        producer.join(timeout=60)
    more = [event(i) for i in range(len(produced), len(produced) + 200)]  # and the stream goes on meanwhile
    produce(more)
    last = IngestProcess(fl.project.root, url, *ARGS, "--until-idle")
    code, out = last.wait()
    assert code == 0, (out, last.lines)
    assert "stopped: idle" in out
    assert_exactly_once(fl, produced + more)
    assert_matches_main(fl)
    assert_every_published_batch_was_logged(fl)


def assert_every_published_batch_was_logged(fl: featurelake.Featurelake) -> None:
    """Each batch on main has its passed audit in the audit log (spooled before its commit; the spools the
    killed consumers left were appended by the next one), and no audit was appended twice."""
    from featurelake.lakehouse import lineage, wap

    tbl = fl.project.load_table("user_features")
    published = set()
    for sid in wap.ancestors(tbl, wap.main_snapshot_id(tbl)):
        snap = tbl.metadata.snapshot_by_id(sid)
        props = snap.summary.additional_properties if snap is not None and snap.summary else {}
        if props.get(lineage.OPERATION) == "ingest":
            published.add(props[lineage.RUN_ID])
    audits = fl.audits("user_features")
    assert published and published <= {a.run_id for a in audits if a.passed}
    assert len({len(a.checks) for a in audits}) == 1  # an audit appended twice would show its checks twice
    assert not list((fl.project.config.state_dir / "log-spool").glob("*/*.arrow"))  # nothing left behind


def test_sigterm_stops_after_the_batch_in_hand(stream: tuple[featurelake.Featurelake, str, Producer]) -> None:
    fl, url, produce = stream
    produced = [event(i) for i in range(1000)]
    produce(produced)
    proc = IngestProcess(fl.project.root, url, *ARGS)  # no --until-idle: runs until told to stop
    proc.wait_for_batches(1)
    proc.proc.send_signal(signal.SIGTERM)
    code, out = proc.wait()
    assert code == 0, (out, proc.lines)
    assert "stopped: stop-requested" in out
    assert any("SIGTERM: stopping" in line for line in proc.lines)
    written = fl.read("user_features").num_rows
    assert written % 250 == 0 and written >= 250  # whole batches only: none half written
    code, out = IngestProcess(fl.project.root, url, *ARGS, "--until-idle").wait()
    assert code == 0, out
    assert_exactly_once(fl, produced)
    assert_matches_main(fl)
