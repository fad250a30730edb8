"""Redis Streams through a consumer group: ``redis://[:PASSWORD@]HOST:PORT[/DB]/STREAM[?group=G&consumer=C]``.

The path's last segments name the stream; a leading numeric segment followed by more is the database
(``redis://h:6379/2/clicks`` is stream ``clicks`` in db 2; ``redis://h:6379/clicks`` is db 0; a lone number,
``redis://h:6379/0``, is refused as naming no stream: write ``/0/123`` for a stream named ``123``). The group
(default ``featurelake-<view>``) is created when missing (``XGROUP CREATE … MKSTREAM``), starting after the
newest offset a committed snapshot holds, else at the start of the stream. The consumer name (default
``ingest``) stays the same across restarts, so a restarted consumer first reads its own pending entries
(delivered, never acknowledged: ``XREADGROUP … 0``) in stream order, then new ones (``>``), and acknowledges
with ``XACK``. Run one consumer per group.

An entry is one message: its ``data`` field holds the JSON object; an entry without a ``data`` field is read as
the object itself, each value parsed as JSON where it parses (``amount`` ``"3.5"`` is 3.5) and kept as a
string otherwise (``event_ts`` ``"2026-12-07T10:00:00+00:00"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from featurelake.errors import StreamUnavailableError, UsageError
from featurelake.streaming.brokers import (
    Broker,
    BrokerOptions,
    Message,
    Position,
    hide_password,
    refuse_unknown,
    split_url,
)

T = TypeVar("T")


def _raw(response: Any, **options: Any) -> Any:
    return response


#: The longest a fetch blocks on the server; the socket timeout allows for it.
MAX_BLOCK_SECONDS = 30.0


def parse_id(offset: str) -> Position:
    """``"1733565600000-3"`` -> ``(1733565600000, 3)``."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


def _field_value(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")


def entry_payload(fields: list[bytes] | None) -> bytes:
    """The JSON bytes of one stream entry, given its fields as Redis sends them (``[name, value, name, …]``):
    the ``data`` field, or the fields as an object; ``b""`` when the entry is gone (deleted or trimmed)."""
    if not fields:
        return b""
    if len(fields) == 2 and fields[0] == b"data":
        return fields[1]
    pairs = dict(zip(fields[::2], fields[1::2], strict=True))
    data = pairs.get(b"data")
    if data is not None:
        return data
    return orjson.dumps({k.decode("utf-8", errors="replace"): _field_value(v) for k, v in pairs.items()})


class RedisStreamsBroker(Broker):
    """One Redis stream read through a consumer group (see the module docstring)."""

    schemes = ("redis", "rediss")

    def __init__(
        self, url: str, client: redis.Redis, stream: str, group: str, consumer: str, source: str
    ) -> None:
        self.url, self.client, self.stream, self.group, self.consumer = url, client, stream, group, consumer
        self._source = source
        # Our own pending entries come first (a restart after a crash): page through them from "0".
        self._pending_cursor: str | None = "0"

    @classmethod
    def connect(cls, url: str, options: BrokerOptions) -> RedisStreamsBroker:
        parts, query = split_url(url)
        refuse_unknown(url, query, ("group", "consumer"))
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) >= 2 and segments[0].isdigit():
            db, stream = int(segments[0]), "/".join(segments[1:])
        else:
            db, stream = 0, "/".join(segments)
        if not stream or (len(segments) == 1 and stream.isdigit()):
            raise UsageError(
                f"--from {hide_password(url)!r} names no stream: write redis://HOST:PORT/STREAM or "
                "redis://HOST:PORT/DB/STREAM"
            )
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        try:
            client = redis.Redis(
                host=host,
                port=port,
                db=db,
                username=parts.username or None,
                password=parts.password or None,
                ssl=parts.scheme == "rediss",
                socket_connect_timeout=options.connect_timeout,
                socket_timeout=options.connect_timeout + MAX_BLOCK_SECONDS,
                health_check_interval=0,
                # One immediate retry reconnects after a Redis restart; more would only delay the error.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:  # pragma: no cover - redis-py validates little at construction
            raise UsageError(f"--from {hide_password(url)!r}: {exc}") from exc
        # XREADGROUP's reply as Redis sends it: redis-py's parsing into a dict per entry costs as much CPU as
        # the rest of reading a batch, and the consumer only wants each entry's id and data field.
        client.set_response_callback("XREADGROUP", _raw)
        source = f"{parts.scheme}://{host}:{port}/{db}/{stream}"
        broker = cls(
            url,
            client,
            stream,
            query.get("group", f"featurelake-{options.view}"),
            query.get("consumer", "ingest"),
            source,
        )
        return broker

    @property
    def source(self) -> str:
        return self._source

    def _run(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StreamUnavailableError(
                f"Redis at {hide_password(self.url)} is unreachable while trying to {what} (stream "
                f"{self.stream!r}, group {self.group!r}): {exc}; check that Redis runs there, then run "
                "`featurelake ingest` again: nothing unacknowledged is lost"
            ) from exc
        except ResponseError as exc:
            text = str(exc)
            if text.startswith("WRONGTYPE"):
                raise UsageError(
                    f"key {self.stream!r} at {hide_password(self.url)} is not a stream: name a stream that "
                    "producers XADD to"
                ) from exc
            raise StreamUnavailableError(
                f"Redis at {hide_password(self.url)} refused to {what} (stream {self.stream!r}, group "
                f"{self.group!r}): {text}"
            ) from exc
        except RedisError as exc:
            raise StreamUnavailableError(
                f"Redis at {hide_password(self.url)} failed to {what} (stream {self.stream!r}): {exc}"
            ) from exc

    def start(self, resume_after: str | None) -> None:
        start = resume_after or "0"

        def create() -> None:
            try:
                self.client.xgroup_create(self.stream, self.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        self._run(create, f"create consumer group {self.group!r}")

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages <= 0:
            return []
        if self._pending_cursor is not None:
            cursor = self._pending_cursor
            got = self._read(cursor, max_messages, None)
            if got:
                self._pending_cursor = got[-1].offset
                return got
            self._pending_cursor = None  # our pending entries are all re-read: new ones from here on
        block = min(max(timeout, 0.0), MAX_BLOCK_SECONDS)
        return self._read(">", max_messages, int(block * 1000) if block > 0 else None)

    def _read(self, cursor: str, count: int, block_ms: int | None) -> list[Message]:
        reply: Any = self._run(
            lambda: self.client.xreadgroup(
                self.group, self.consumer, {self.stream: cursor}, count=count, block=block_ms
            ),
            "read the stream",
        )
        out: list[Message] = []
        if isinstance(reply, dict):  # RESP3 (protocol=3 in the URL): {stream: [entries]}
            reply = list(reply.items())
        for _, entries in reply or ():
            for raw_id, fields in entries:
                offset = raw_id.decode()
                ms, _, seq = offset.partition("-")
                out.append(Message(offset, (int(ms), int(seq)), entry_payload(fields)))
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        ids = [m.offset for m in messages]
        for i in range(0, len(ids), 10_000):
            chunk = ids[i : i + 10_000]
            self._xack(chunk)

    def _xack(self, ids: list[str]) -> None:
        self._run(lambda: self.client.xack(self.stream, self.group, *ids), "acknowledge messages")

    def position(self, offset: str) -> Position:
        return parse_id(offset)

    def backlog(self) -> int | None:
        groups: Any = self._run(lambda: self.client.xinfo_groups(self.stream), "read the group's lag")
        for g in groups:
            name = g.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                lag = g.get("lag")
                return int(lag) if lag is not None else None
        return None

    def close(self) -> None:
        self.client.close()


__all__ = ["RedisStreamsBroker", "entry_payload", "parse_id"]
