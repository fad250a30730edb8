"""featurelake ingest in-process: message decoding, Redis Streams and NATS JetStream end to end, resuming after
a commit that was never acknowledged, refused batches, bad messages, metrics, and every error path."""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

import featurelake
from featurelake import telemetry
from featurelake.errors import ConfigError, StreamUnavailableError, UsageError
from featurelake.jobs.ingest import run_ingest
from featurelake.streaming.brokers import Broker, BrokerOptions, Message, open_broker
from featurelake.streaming.ingest import Ingestor, IngestSettings, RefusedBatch, offset_key
from featurelake.streaming.messages import MessageDecoder
from featurelake.streaming.microbatch import last_committed
from tests.online_helpers import assert_matches_main, project
from tests.redis_server import free_port, redis_session_fixture, redis_url_fixture  # noqa: F401
from tests.stream_helpers import (
    VIEW,
    NatsServer,
    assert_exactly_once,
    event,
    js_publish,
    nats_server_fixture,  # noqa: F401
    xadd,
)

FAST = {"batch_seconds": 0.3, "poll_seconds": 0.2, "until_idle": True}


def settings(**kw: Any) -> IngestSettings:
    return IngestSettings(**{**FAST, **kw})


def stream_url(redis_url: str, stream: str) -> str:
    return f"{redis_url}/{stream}"  # redis://127.0.0.1:PORT/0/STREAM


def rejected(fl: featurelake.Featurelake) -> list[dict[str, Any]]:
    return fl.read("features._rejected").to_pylist()


def messages_total(outcome: str) -> float:
    value = telemetry.REGISTRY.get_sample_value(
        "featurelake_stream_messages_total", {"view": VIEW, "outcome": outcome}
    )
    return value or 0.0


# --- decoding -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MessageDecoder]:
    fl = project(tmp_path_factory.mktemp("decode") / "p", "sqlite")
    try:
        yield MessageDecoder(fl.project.view(VIEW), fl.project.load_table(VIEW).schema().as_arrow())
    finally:
        fl.close()


def msgs(*payloads: Any) -> list[Message]:
    return [
        Message(str(i), (i, 0), p if isinstance(p, bytes) else json.dumps(p).encode())
        for i, p in enumerate(payloads, 1)
    ]


def test_decoding_accepts_zoned_text_and_epoch_seconds_and_fills_missing_fields(
    decoder: MessageDecoder,
) -> None:
    out = decoder.decode(
        msgs(
            {"user_id": 1, "event_ts": "2024-01-05T10:00:00Z", "amount_avg_1d": 2, "unknown": "ignored"},
            {"user_id": 2, "event_ts": "2024-01-05T12:00:00+02:00", "txn_count_1d": 3},
            {"user_id": 3, "event_ts": 1704448800.5, "amount_sum_1d": 1.25},
        )
    )
    assert out.bad == []
    assert out.rows.column_names == ["user_id", "event_ts", "txn_count_1d", "amount_sum_1d", "amount_avg_1d"]
    rows = out.rows.to_pylist()
    assert [r["event_ts"] for r in rows] == [
        datetime(2024, 1, 5, 10, tzinfo=UTC),
        datetime(2024, 1, 5, 10, tzinfo=UTC),
        datetime(2024, 1, 5, 10, 0, 0, 500000, tzinfo=UTC),
    ]
    assert rows[0]["amount_avg_1d"] == 2.0 and rows[0]["txn_count_1d"] is None
    assert rows[1]["txn_count_1d"] == 3 and rows[2]["amount_sum_1d"] == 1.25


def test_decoding_keeps_every_bad_message_aside_with_its_reason(decoder: MessageDecoder) -> None:
    good = {"user_id": 1, "event_ts": "2024-01-05T10:00:00Z", "amount_avg_1d": 1.0}
    out = decoder.decode(
        msgs(
            good,
            b"not json",
            b"",
            [1, 2],
            {"event_ts": "2024-01-05T10:00:00Z"},
            {"user_id": 2, "event_ts": "2024-01-05T10:00:00"},
            {"user_id": "x", "event_ts": "2024-01-05T10:00:00Z"},
            {"user_id": 3, "event_ts": "2024-01-05T10:00:00Z", "txn_count_1d": 1.5},
            {"user_id": 4, "event_ts": True},
            {**good, "user_id": 5},
        )
    )
    assert [r["user_id"] for r in out.rows.to_pylist()] == [1, 5]
    reasons = {b.message.offset: b.reason for b in out.bad}
    assert reasons["2"].startswith("not JSON")
    assert reasons["3"] == "empty message (deleted from the stream?)"
    assert reasons["4"] == "not a JSON object but a list"
    assert "'user_id' is missing or null" in reasons["5"]
    assert "has no time zone" in reasons["6"]
    assert "column 'user_id' (int64)" in reasons["7"] and "'x'" in reasons["7"]
    assert "column 'txn_count_1d' (int64)" in reasons["8"]
    assert "column 'event_ts'" in reasons["9"] and "not a timestamp" in reasons["9"]
    assert [b.message.offset for b in out.bad] == sorted(reasons, key=int)


def test_each_unreadable_value_is_named_in_its_message_s_reason(decoder: MessageDecoder) -> None:
    good = {"user_id": 1, "event_ts": "2024-01-05T10:00:00Z", "amount_avg_1d": 1.0}
    out = decoder.decode(
        msgs(
            {"user_id": 2, "event_ts": "yesterday"},
            {"user_id": 3, "event_ts": 1e20},
            {"user_id": 4, "event_ts": ["2024-01-05"]},
            {**good, "user_id": 5, "amount_avg_1d": "abc"},
            {**good, "user_id": 6, "amount_avg_1d": False},
            good,
        )
    )
    assert [r["user_id"] for r in out.rows.to_pylist()] == [1]
    reasons = {b.message.offset: b.reason for b in out.bad}
    assert "'yesterday' is not an ISO 8601 timestamp" in reasons["1"]
    assert "1e+20 is not a time in seconds since the epoch" in reasons["2"]
    assert "list ['2024-01-05'] is not a timestamp" in reasons["3"]
    assert "column 'amount_avg_1d' (double)" in reasons["4"] and "'abc'" in reasons["4"]
    assert "column 'amount_avg_1d' (double)" in reasons["5"] and "False" in reasons["5"]


def test_decoding_a_batch_of_only_bad_messages(decoder: MessageDecoder) -> None:
    out = decoder.decode(msgs(b"{", {"user_id": None, "event_ts": "2024-01-05T10:00:00Z"}))
    assert out.rows.num_rows == 0 and len(out.bad) == 2


# --- Redis Streams ----------------------------------------------------------------------------------------------
@pytest.fixture
def fl_redis(tmp_path: Path, redis_url: str) -> Iterator[featurelake.Featurelake]:
    handle = project(tmp_path / "proj", "redis", redis_url)
    try:
        yield handle
    finally:
        handle.close()


@pytest.mark.redis
def test_redis_stream_is_published_acknowledged_and_resumed(
    fl_redis: featurelake.Featurelake, redis_url: str
) -> None:
    stream = f"events-{uuid.uuid4().hex[:6]}"
    produced = [event(i) for i in range(120)]
    repeats = [event(5), event(77)]  # delivered again by a producer retry: same key and event time
    ids = xadd(redis_url, stream, [*produced[:60], *repeats, b"{broken", *produced[60:]])
    before = {o: messages_total(o) for o in ("written", "duplicate", "bad")}
    seen: list[Any] = []
    url = stream_url(redis_url, stream)
    result = run_ingest(fl_redis.project, VIEW, url, settings=settings(batch_rows=50), on_batch=seen.append)
    assert result.stopped == "idle" and len(result.batches) == 3
    assert (result.total("messages"), result.total("written"), result.total("bad")) == (123, 120, 1)
    assert result.total("duplicates") == 2
    assert_exactly_once(fl_redis, produced)
    assert_matches_main(fl_redis)
    # Acknowledged after the commit: nothing pending; the offset of the last batch is on main.
    with redis.Redis.from_url(redis_url) as r:
        assert r.xpending(stream, f"featurelake-{VIEW}")["pending"] == 0
    source = f"redis://127.0.0.1:{redis_url.split(':')[2].split('/')[0]}/0/{stream}"
    assert result.source == source
    assert last_committed(fl_redis.project, VIEW, offset_key(source)) == ids[-1]
    (bad,) = [r for r in rejected(fl_redis) if "unreadable" in r["verdict"]]
    assert json.loads(bad["row"])["message"] == "{broken" and json.loads(bad["row"])["offset"] == ids[60 + 2]
    # Metrics: per outcome, and the lag of the last batch.
    assert messages_total("written") - before["written"] == 120
    assert messages_total("duplicate") - before["duplicate"] == 2
    assert messages_total("bad") - before["bad"] == 1
    lag = telemetry.REGISTRY.get_sample_value("featurelake_stream_lag_seconds", {"view": VIEW})
    assert lag is not None and lag == pytest.approx(seen[-1].lag_seconds)
    newest = datetime.fromisoformat(produced[-1]["event_ts"])
    assert lag >= (datetime.now(UTC) - newest).total_seconds() - 600
    # A second run resumes after the committed offset and reads only what came since.
    more = [event(i) for i in range(120, 150)]
    xadd(redis_url, stream, more)
    again = run_ingest(fl_redis.project, VIEW, url, settings=settings(batch_rows=50))
    assert again.resumed_after == ids[-1]
    assert (again.total("messages"), again.total("written"), again.total("skipped")) == (30, 30, 0)
    assert_exactly_once(fl_redis, produced + more)
    assert_matches_main(fl_redis)


class CrashOnAck(Broker):
    """A broker whose process 'dies' right after the commit, before acknowledging (ack raises)."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    @classmethod
    def connect(cls, url: str, options: BrokerOptions) -> Broker:  # pragma: no cover - built by hand
        raise NotImplementedError

    @property
    def source(self) -> str:
        return self.inner.source

    def start(self, resume_after: str | None) -> None:
        self.inner.start(resume_after)

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        return self.inner.fetch(max_messages, timeout)

    def ack(self, messages: Sequence[Message]) -> None:
        raise KeyboardInterrupt("killed between the Iceberg commit and the acknowledgement")

    def position(self, offset: str) -> tuple[int, int]:
        return self.inner.position(offset)


@pytest.mark.redis
def test_a_batch_committed_but_never_acknowledged_is_skipped_after_restart(
    fl_redis: featurelake.Featurelake, redis_url: str
) -> None:
    stream = f"events-{uuid.uuid4().hex[:6]}"
    produced = [event(i) for i in range(90)]
    xadd(redis_url, stream, produced)
    url = stream_url(redis_url, stream)
    options = BrokerOptions(VIEW, max_in_flight=40)
    broker = CrashOnAck(open_broker(url, options))
    with pytest.raises(KeyboardInterrupt):
        Ingestor(fl_redis.project, VIEW, broker, settings(batch_rows=40), online=fl_redis.online.store).run()
    broker.inner.close()
    assert fl_redis.read(VIEW).num_rows == 40  # committed, not acknowledged
    with redis.Redis.from_url(redis_url) as r:
        assert r.xpending(stream, f"featurelake-{VIEW}")["pending"] == 40
    result = run_ingest(fl_redis.project, VIEW, url, settings=settings(batch_rows=40))
    # The 40 pending ones come first, are recognised by their committed offset and only acknowledged.
    assert [b.skipped for b in result.batches] == [40, 0, 0]
    assert result.total("written") == 50
    assert_exactly_once(fl_redis, produced)
    assert_matches_main(fl_redis)
    with redis.Redis.from_url(redis_url) as r:
        assert r.xpending(stream, f"featurelake-{VIEW}")["pending"] == 0


@pytest.mark.redis
def test_a_refused_batch_is_kept_aside_and_the_stream_goes_on_or_stops(
    fl_redis: featurelake.Featurelake, redis_url: str
) -> None:
    stream = f"events-{uuid.uuid4().hex[:6]}"
    good = [event(i) for i in range(20)]
    poisoned = [event(i, txn_count_1d=99_999) for i in range(20, 40)]  # checks.between(0, 10_000) fails
    later = [event(i) for i in range(40, 60)]
    xadd(redis_url, stream, [*good, *poisoned, *later])
    url = stream_url(redis_url, stream)
    result = run_ingest(fl_redis.project, VIEW, url, settings=settings(batch_rows=20))
    assert [b.status for b in result.batches] == ["published", "refused", "published"]
    assert result.batches[1].refused == 20 and "txn_count_1d" in " ".join(result.batches[1].notes)
    assert_exactly_once(fl_redis, good + later)  # main never saw the refused batch
    kept = [json.loads(r["row"]) for r in rejected(fl_redis) if r["run_id"] == result.batches[1].run_id]
    assert sorted(k["txn_count_1d"] for k in kept) == [99_999] * 20
    verdicts = {r["verdict"] for r in rejected(fl_redis)}
    assert len(verdicts) == 1 and "txn_count_1d" in verdicts.pop()
    assert_matches_main(fl_redis)

    # on_refused: stop -> exit with AuditFailed, the refused batch left unacknowledged for the next run.
    stream2 = f"events-{uuid.uuid4().hex[:6]}"
    xadd(redis_url, stream2, [event(i, txn_count_1d=99_999) for i in range(100, 110)])
    with pytest.raises(RefusedBatch, match="not acknowledged") as info:
        run_ingest(
            fl_redis.project,
            VIEW,
            stream_url(redis_url, stream2),
            settings=settings(batch_rows=10, on_refused="stop"),
        )
    assert info.value.exit_code == 1
    with redis.Redis.from_url(redis_url) as r:
        assert r.xpending(stream2, f"featurelake-{VIEW}")["pending"] == 10
    assert_exactly_once(fl_redis, good + later)


@pytest.mark.redis
def test_flat_entries_max_batches_and_no_online(fl_redis: featurelake.Featurelake, redis_url: str) -> None:
    stream = f"events-{uuid.uuid4().hex[:6]}"
    with redis.Redis.from_url(redis_url) as r:
        for i in range(6):  # an entry without a data field: its fields are the columns
            e = event(i)
            r.xadd(stream, {"user_id": str(e["user_id"]), "event_ts": e["event_ts"], "amount_avg_1d": "1.5"})
    url = stream_url(redis_url, stream) + "?group=g1&consumer=c1"
    result = run_ingest(
        fl_redis.project, VIEW, url, settings=settings(batch_rows=2, max_batches=2, online=False)
    )
    assert result.stopped == "max-batches" and result.total("written") == 4
    assert {r["amount_avg_1d"] for r in fl_redis.read(VIEW).to_pylist()} == {1.5}
    assert all(b.online_keys == 0 for b in result.batches)
    assert fl_redis.online.store.read([(VIEW, ["0", "1"])])[0] == [None, None]
    with redis.Redis.from_url(redis_url) as r:
        assert r.xinfo_groups(stream)[0]["name"] == b"g1"


# --- errors ------------------------------------------------------------------------------------------------------
def test_bad_urls_are_usage_errors(tmp_path: Path) -> None:
    opts = BrokerOptions(VIEW, max_in_flight=10, connect_timeout=0.5)
    with pytest.raises(UsageError, match=r"unknown stream scheme 'kafka'.*redis://"):
        open_broker("kafka://127.0.0.1:9092/events", opts)
    with pytest.raises(UsageError, match="unknown stream scheme '\\(none\\)'"):
        open_broker("events", opts)
    with pytest.raises(UsageError, match="names no stream"):
        open_broker("redis://127.0.0.1:6379/0", opts)
    with pytest.raises(UsageError, match="unknown query parameter bogus"):
        open_broker("redis://127.0.0.1:6379/events?bogus=1", opts)
    with pytest.raises(UsageError, match="one non-empty value"):
        open_broker("redis://127.0.0.1:6379/events?group=", opts)
    with pytest.raises(UsageError, match="names no subject"):
        open_broker("nats://127.0.0.1:4222/", opts)
    with pytest.raises(UsageError, match="is not a URL"):
        open_broker("redis://127.0.0.1:notaport/events", opts)


def test_unreachable_brokers_name_the_url_without_the_password() -> None:
    port = free_port()
    opts = BrokerOptions(VIEW, max_in_flight=10, connect_timeout=0.5)
    broker = open_broker(f"redis://:s3cret@127.0.0.1:{port}/events", opts)
    with pytest.raises(
        StreamUnavailableError, match=f"Redis at redis://:\\*\\*\\*@127.0.0.1:{port}/events"
    ) as info:
        broker.start(None)
    assert "s3cret" not in str(info.value) and info.value.transient
    broker.close()
    with pytest.raises(
        StreamUnavailableError, match=f"NATS at nats://127.0.0.1:{port}/events failed to connect"
    ):
        open_broker(f"nats://127.0.0.1:{port}/events", opts)


def test_a_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_nats(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "nats" or name.startswith("nats."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "featurelake.streaming.nats_jetstream", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_nats)
    with pytest.raises(ConfigError, match=r"pip install 'featurelake\[nats\]'"):
        open_broker("nats://127.0.0.1:4222/events", BrokerOptions(VIEW, max_in_flight=10))


@pytest.mark.redis
def test_a_key_that_is_not_a_stream_and_an_unknown_view(
    fl_redis: featurelake.Featurelake, redis_url: str
) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.set("plain", "1")
    with pytest.raises(UsageError, match=r"key 'plain' .* is not a stream"):
        run_ingest(fl_redis.project, VIEW, stream_url(redis_url, "plain"), settings=settings())
    with pytest.raises(UsageError, match="nope"):
        run_ingest(fl_redis.project, "nope", stream_url(redis_url, "events"), settings=settings())
    with pytest.raises(UsageError, match="--max-batches must be >= 1"):
        IngestSettings.from_config(fl_redis.project.config.settings.ingest, max_batches=0)


# --- NATS JetStream -------------------------------------------------------------------------------------------
@pytest.mark.nats
def test_jetstream_subject_is_published_acknowledged_and_resumed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    fl = project(tmp_path / "proj", "sqlite")
    try:
        name = f"S{uuid.uuid4().hex[:8]}"
        produced = [event(i) for i in range(75)]
        js_publish(nats_server.url, name, f"{name}.users", [*produced[:30], b"[]", *produced[30:]])
        js_publish(nats_server.url, name, f"{name}.other", [event(1000)])  # another subject: not ours
        url = f"{nats_server.url}/{name}.users"
        result = run_ingest(fl.project, VIEW, url, settings=settings(batch_rows=25))
        assert (result.total("messages"), result.total("written"), result.total("bad")) == (76, 75, 1)
        assert result.source == f"{nats_server.url}/{name}/{name}.users"
        assert_exactly_once(fl, produced)
        assert_matches_main(fl)
        assert last_committed(fl.project, VIEW, offset_key(result.source)) == "76"
        more = [event(i) for i in range(75, 90)]
        js_publish(nats_server.url, name, f"{name}.users", more)
        again = run_ingest(fl.project, VIEW, url, settings=settings(batch_rows=25))
        assert again.resumed_after == "76" and again.total("messages") == 15
        assert_exactly_once(fl, produced + more)
        with pytest.raises(UsageError, match=r"no JetStream stream captures subject 'nobody\.here'"):
            run_ingest(fl.project, VIEW, f"{nats_server.url}/nobody.here", settings=settings())
        with pytest.raises(UsageError, match="stream 'NOPE' does not exist"):
            run_ingest(fl.project, VIEW, f"{nats_server.url}/{name}.users?stream=NOPE", settings=settings())
    finally:
        fl.close()


def test_arrow_rows_of_the_decoder_fit_the_writer(decoder: MessageDecoder) -> None:
    out = decoder.decode(msgs({"user_id": 1, "event_ts": "2024-01-05T10:00:00Z"}))
    assert isinstance(out.rows, pa.Table) and out.rows.schema == decoder.target


@pytest.mark.redis
def test_the_python_facade_mirrors_the_cli(fl_redis: featurelake.Featurelake, redis_url: str) -> None:
    stream = f"events-{uuid.uuid4().hex[:6]}"
    produced = [event(i) for i in range(30)]
    xadd(redis_url, stream, produced)
    url = stream_url(redis_url, stream)
    seen: list[Any] = []
    first = fl_redis.ingest(VIEW, url, max_batches=1, batch_rows=10, on_batch=seen.append)
    assert (first.stopped, first.total("written"), len(seen)) == ("max-batches", 10, 1)
    rest = fl_redis.ingest(VIEW, url, until_idle=True, batch_rows=10, batch_seconds=0.3, poll_seconds=0.2)
    assert rest.resumed_after == first.batches[0].last_offset and rest.total("written") == 20
    assert_exactly_once(fl_redis, produced)
    assert_matches_main(fl_redis)
    with pytest.raises(UsageError, match="unknown ingest setting 'batch_size'"):
        fl_redis.ingest(VIEW, url, batch_size=5)


@pytest.mark.redis
def test_cli_json_exit_codes_and_error_lines(
    fl_redis: featurelake.Featurelake, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.training_helpers import run_cli

    root = fl_redis.project.root
    (root / "featurelake.yaml").write_text(
        (root / "featurelake.yaml").read_text() + "ingest:\n  poll_seconds: 0.2\n  batch_seconds: 0.3\n"
    )
    stream = f"events-{uuid.uuid4().hex[:6]}"
    xadd(redis_url, stream, [event(i) for i in range(12)])
    url = stream_url(redis_url, stream)
    code, out, _ = run_cli(
        capsys, root, "ingest", VIEW, "--from", url, "--until-idle", "--batch-rows", "5", "--json"
    )
    assert code == 0
    body = json.loads(out)
    assert (body["batches"], body["messages"], body["written"], body["stopped"]) == (3, 12, 12, "idle")
    assert [d["messages"] for d in body["details"]] == [5, 5, 2]
    xadd(redis_url, stream, [event(i, txn_count_1d=99_999) for i in range(12, 15)])
    code, _, err = run_cli(
        capsys, root, "ingest", VIEW, "--from", url, "--until-idle", "--on-refused", "stop"
    )
    assert code == 1 and "error: ingest of user_features" in err and "not acknowledged" in err
    code, _, err = run_cli(capsys, root, "ingest", VIEW, "--from", "kafka://h:9092/t")
    assert code == 2 and "unknown stream scheme 'kafka'" in err
    code, _, err = run_cli(capsys, root, "ingest", VIEW, "--from", f"redis://127.0.0.1:{free_port()}/0/x")
    assert code == 1 and "error: Redis at" in err and "nothing unacknowledged is lost" in err
