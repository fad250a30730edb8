"""NATS JetStream through a durable pull consumer: ``nats://[USER:PASSWORD@]HOST:PORT/SUBJECT[?stream=S&durable=D]``.

The stream is the one whose subjects capture SUBJECT (or ``?stream=``); producers create it, ingest never
does. The durable consumer (default ``featurelake-<view>``, filtered on SUBJECT, ``AckAll``,
``max_ack_pending`` = ``ingest.max_in_flight``) is made anew at every start, beginning right after the newer of
the offset a committed snapshot holds and the old consumer's acknowledged floor. So messages a killed consumer
had in flight come back at once and in stream order, rather than out of order after ``ack_wait``. Run one
consumer per durable.

A message's payload is the JSON object; its offset is its stream sequence number. nats-py is asyncio; this
broker drives its own event loop, so the consumer stays synchronous like every other featurelake job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

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

#: JetStream's error code for "stream not found" (consumer not found is 10014).
STREAM_NOT_FOUND = 10059


class JetStreamBroker(Broker):
    """One subject of a JetStream stream, read by a durable pull consumer (see the module docstring)."""

    schemes = ("nats",)

    def __init__(self, url: str, subject: str, timeout: float) -> None:
        self.url, self.subject, self.timeout = url, subject, timeout
        self.loop = asyncio.new_event_loop()
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.psub: JetStreamContext.PullSubscription | None = None
        self.stream = ""
        self.durable = ""
        self._source = ""
        self.options: BrokerOptions | None = None

    # --- plumbing ---------------------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        try:
            return self.loop.run_until_complete(asyncio.wait_for(coro, timeout or self.timeout * 3))
        except (nats.js.errors.NotFoundError, UsageError):
            raise
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StreamUnavailableError(
                f"NATS at {hide_password(self.url)} failed to {what} (subject {self.subject!r}"
                f"{', stream ' + repr(self.stream) if self.stream else ''}): {type(exc).__name__}: {exc}; check "
                "that nats-server runs there with JetStream (-js), then run `featurelake ingest` again: "
                "nothing unacknowledged is lost"
            ) from exc

    @classmethod
    def connect(cls, url: str, options: BrokerOptions) -> JetStreamBroker:
        parts, query = split_url(url)
        refuse_unknown(url, query, ("stream", "durable"))
        subject = parts.path.lstrip("/")
        if not subject or "/" in subject:
            raise UsageError(
                f"--from {hide_password(url)!r} names no subject: write nats://HOST:PORT/SUBJECT "
                "(e.g. nats://127.0.0.1:4222/events.users)"
            )
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        broker = cls(url, subject, options.connect_timeout)
        try:
            broker._open(f"nats://{host}:{port}", parts.username, parts.password, query, options)
        except BaseException:
            broker.close()
            raise
        broker._source = f"nats://{host}:{port}/{broker.stream}/{subject}"
        return broker

    def _open(
        self,
        server: str,
        user: str | None,
        password: str | None,
        query: dict[str, str],
        options: BrokerOptions,
    ) -> None:
        async def quiet(_: Exception) -> None:  # errors surface from the calls themselves
            return None

        self.nc = self._run(
            nats.connect(
                servers=[server],
                user=user or None,
                password=password or None,
                connect_timeout=max(1, round(self.timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=quiet,
            ),
            "connect",
        )
        self.js = self.nc.jetstream(timeout=self.timeout)
        self.stream = query.get("stream") or self._stream_of(self.subject)
        self.durable = query.get("durable", f"featurelake-{options.view}")
        self.options = options

    def _stream_of(self, subject: str) -> str:
        assert self.js is not None
        try:
            return self._run(self.js.find_stream_name_by_subject(subject), "find the stream")
        except nats.js.errors.NotFoundError as exc:
            raise UsageError(
                f"no JetStream stream captures subject {subject!r} at {hide_password(self.url)}: create one "
                f"(`nats stream add --subjects {subject!r} …`) or name it with ?stream=NAME"
            ) from exc

    def _no_stream(self) -> UsageError:
        return UsageError(
            f"JetStream stream {self.stream!r} does not exist at {hide_password(self.url)}: create it with a "
            f"subject that captures {self.subject!r}, or fix ?stream="
        )

    def start(self, resume_after: str | None) -> None:
        options, js = self.options, self.js
        assert options is not None and js is not None
        floor = 0
        try:
            info = self._run(js.consumer_info(self.stream, self.durable), "read the durable consumer")
            floor = int(info.ack_floor.stream_seq) if info.ack_floor is not None else 0
            self._run(js.delete_consumer(self.stream, self.durable), "reset the durable consumer")
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                raise self._no_stream() from exc
        committed = int(resume_after) if resume_after else 0
        start = max(floor, committed) + 1
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.subject,
            ack_policy=AckPolicy.ALL,
            max_ack_pending=options.max_in_flight,
            ack_wait=options.ack_wait,
            max_deliver=-1,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
        )
        try:
            self._run(js.add_consumer(self.stream, config), "create the durable consumer")
        except nats.js.errors.NotFoundError as exc:
            raise self._no_stream() from exc
        self.psub = self._run(
            js.pull_subscribe_bind(durable=self.durable, stream=self.stream), "bind to the durable consumer"
        )

    # --- Broker -----------------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self._source

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages <= 0:
            return []
        psub = self.psub
        assert psub is not None

        async def pull() -> list[Any]:
            try:
                return await psub.fetch(batch=max_messages, timeout=max(timeout, 0.05))
            except (nats.errors.TimeoutError, TimeoutError):
                # No message within the wait (nats-py raises either, depending on where it waited).
                return []

        msgs = self._run(pull(), "fetch messages", timeout=max(timeout, 0.05) + self.timeout * 3)
        out: list[Message] = []
        for m in msgs:
            seq = int(m.metadata.sequence.stream)
            out.append(Message(str(seq), (seq, 0), m.data, m))
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        nc = self.nc
        assert nc is not None
        last = max(messages, key=lambda m: m.position)  # AckAll: one ack covers everything before it

        async def ack() -> None:
            await last.handle.ack()
            await nc.flush(timeout=max(1, round(self.timeout)))

        self._run(ack(), "acknowledge messages")

    def position(self, offset: str) -> Position:
        return int(offset), 0

    def backlog(self) -> int | None:
        js = self.js
        assert js is not None
        info = self._run(js.consumer_info(self.stream, self.durable), "read the consumer's backlog")
        return int(info.num_pending or 0)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            if self.psub is not None:
                self.loop.run_until_complete(asyncio.wait_for(self.psub.unsubscribe(), self.timeout))
            if self.nc is not None and not self.nc.is_closed:
                self.loop.run_until_complete(asyncio.wait_for(self.nc.close(), self.timeout))
        except Exception:  # closing is best effort: the process may be stopping because NATS went away
            pass
        finally:
            self.loop.close()


__all__ = ["JetStreamBroker"]
