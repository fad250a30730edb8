"""The brokers ``featurelake ingest`` consumes: one small interface, picked by the URL's scheme.

::

    redis://[:PASSWORD@]HOST:PORT[/DB]/STREAM[?group=G&consumer=C]     Redis Streams (consumer group)
    rediss://…                                                          the same over TLS
    nats://[USER:PASSWORD@]HOST:PORT/SUBJECT[?stream=S&durable=D]      NATS JetStream (durable pull consumer)

A :class:`Broker` hands out messages in the order of the stream (first those it delivered before and that
were never acknowledged, then new ones), at most as many as asked (the consumer asks for what its
micro-batch has room for: pull-based, so unacknowledged messages stay bounded), and acknowledges them when the
consumer says so: after their rows are committed to Iceberg, or kept aside. Positions are comparable
(:attr:`Message.position`), so a restarted consumer can skip what a committed snapshot already holds.

Brokers load lazily through :data:`AVAILABLE_BROKERS` (scheme -> module, class, extra), so a missing client
library is a :class:`~featurelake.errors.ConfigError` with the ``pip install`` line. Kafka is not here: no
broker of it installs from the package registries this project builds from (see docs/streaming.md).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import SplitResult, parse_qs, urlsplit

from featurelake.errors import ConfigError, UsageError

#: (stream-level order, order within it): Redis ``ms-seq`` ids, JetStream ``(stream sequence, 0)``.
Position = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Message:
    """One message as delivered: its id in the broker, its comparable position, the raw payload."""

    offset: str
    """The broker's own id: ``1733565600000-0`` (Redis), ``42`` (JetStream stream sequence)."""
    position: Position
    data: bytes
    handle: Any = None
    """What acknowledging it needs (the JetStream message); None for Redis."""


@dataclass(frozen=True)
class BrokerOptions:
    """What the ingest consumer tells a broker beyond its URL."""

    view: str
    """The feature view being filled (default consumer group / durable name: ``featurelake-<view>``)."""
    max_in_flight: int
    """Most messages delivered and not yet acknowledged (JetStream: the consumer's max_ack_pending)."""
    connect_timeout: float = 5.0
    """Seconds to wait for the broker to answer before :class:`~featurelake.errors.StreamUnavailableError`."""
    ack_wait: float = 60.0
    """JetStream: seconds before an unacknowledged message is delivered again."""


class Broker(ABC):
    """A consumer's view of one stream. Not thread-safe; one consumer per group (or durable) at a time."""

    #: URL schemes this broker reads.
    schemes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def connect(cls, url: str, options: BrokerOptions) -> Broker:
        """Parse ``url`` and connect (nothing is read yet: see :meth:`start`)."""

    @abstractmethod
    def start(self, resume_after: str | None) -> None:
        """Make sure the consumer group (or durable) exists; a new one starts right after ``resume_after``
        (the newest offset a committed snapshot holds), else at the start of the stream."""

    @property
    @abstractmethod
    def source(self) -> str:
        """The stream's identity without credentials (``redis://127.0.0.1:6379/0/clicks``): the snapshot
        summary records offsets under it."""

    @abstractmethod
    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` messages in stream order, waiting at most ``timeout`` seconds when none is
        ready (then ``[]``)."""

    @abstractmethod
    def ack(self, messages: Sequence[Message]) -> None:
        """Tell the broker these messages are done with (never to be delivered again)."""

    @abstractmethod
    def position(self, offset: str) -> Position:
        """The comparable position of an offset this broker produced (a committed snapshot's)."""

    def backlog(self) -> int | None:
        """Messages in the stream not yet delivered to this consumer, if the broker can tell cheaply."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# scheme -> (module, class, extra that provides its client library)
AVAILABLE_BROKERS: dict[str, tuple[str, str, str | None]] = {
    "redis": ("featurelake.streaming.redis_streams", "RedisStreamsBroker", "redis"),
    "rediss": ("featurelake.streaming.redis_streams", "RedisStreamsBroker", "redis"),
    "nats": ("featurelake.streaming.nats_jetstream", "JetStreamBroker", "nats"),
}


def split_url(url: str) -> tuple[SplitResult, dict[str, str]]:
    """The parts of a broker URL and its query parameters (each given once)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"--from {hide_password(url)!r} is not a URL ({exc})") from exc
    query: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if len(values) != 1 or not values[0]:
            raise UsageError(
                f"--from {hide_password(url)!r}: give query parameter {name!r} one non-empty value"
            )
        query[name] = values[0]
    return parts, query


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages, summaries and metrics)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def refuse_unknown(url: str, query: dict[str, str], known: Sequence[str]) -> None:
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise UsageError(
            f"--from {hide_password(url)!r}: unknown query parameter {', '.join(unknown)}; "
            f"this broker takes {', '.join(known) or 'none'}"
        )


def open_broker(url: str, options: BrokerOptions) -> Broker:
    """The broker ``url`` names, connected; a missing client library gives an install hint."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in AVAILABLE_BROKERS:
        raise UsageError(
            f"--from {hide_password(url)!r}: unknown stream scheme {scheme or '(none)'!r}; use one of "
            f"{', '.join(s + '://' for s in AVAILABLE_BROKERS)} (e.g. redis://127.0.0.1:6379/0/events or "
            "nats://127.0.0.1:4222/events)"
        )
    module_name, cls_name, extra = AVAILABLE_BROKERS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("featurelake"):
            raise
        hint = f": pip install 'featurelake[{extra}]'" if extra else ""
        raise ConfigError(
            f"stream scheme {scheme}:// needs {exc.name}, which is not installed{hint}"
        ) from exc
    broker_cls: type[Broker] = getattr(module, cls_name)
    return broker_cls.connect(url, options)


__all__ = [
    "AVAILABLE_BROKERS",
    "Broker",
    "BrokerOptions",
    "Message",
    "Position",
    "hide_password",
    "open_broker",
    "split_url",
]
