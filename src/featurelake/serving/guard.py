"""Slow-client guard for ``featurelake serve``: uvicorn's HTTP protocol plus the deadlines it lacks.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``) and answers
503 over ``limit_concurrency``, but a socket that connects and sends nothing, or trickles its headers or its
body, is held forever, and sockets over the limit stay open. :class:`GuardedHttpToolsProtocol` is uvicorn's
httptools protocol with, per connection:

* a **header deadline** (``server.header_timeout_seconds``) from the moment the connection opens, or from
  the first byte of a request after a keep-alive pause, to the end of that request's headers: on expiry a
  connection that sent part of a request gets ``408`` and is closed; one that sent nothing is closed;
* a **body deadline** (``server.body_timeout_seconds``) from the end of the headers to the end of the body:
  on expiry ``408`` and the connection is closed (the handler sees a disconnect);
* a **header size limit** (``server.max_header_bytes``, request line and headers): ``431`` and closed;
* a **connection limit** (``server.max_connections`` per worker process): a connection over it gets ``503``
  and is closed at once, instead of holding a socket until a request arrives.

It also sends a response in one piece: uvicorn writes the status line and headers, then the body, each
straight to the socket, so every answer cost two ``send`` system calls and woke the client twice (it read
the head, then waited again for the body). :class:`_Coalescing` gathers what one turn of the event loop
writes to a connection and sends it with one call at the end of that turn.

Timers are armed only when a request is incomplete after the bytes at hand were parsed, so a request that
arrives in one piece costs no timer. Bodies answered here are the server's JSON ``{"error", "detail"}``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_IDLE, _HEADERS, _BODY, _APP = range(4)


def _raw(status: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection limits of one server (``server.*``), picklable for worker processes."""

    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 5.0
    max_connections: int = 1000
    max_header_bytes: int = 65_536
    responses: dict[str, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        responses = {
            "header": _raw(
                "408 Request Timeout",
                "RequestTimeout",
                f"request headers not received within {self.header_timeout_seconds:g} s "
                "(server.header_timeout_seconds)",
            ),
            "body": _raw(
                "408 Request Timeout",
                "RequestTimeout",
                f"request body not received within {self.body_timeout_seconds:g} s "
                "(server.body_timeout_seconds)",
            ),
            "size": _raw(
                "431 Request Header Fields Too Large",
                "HeadersTooLarge",
                f"request line and headers exceed {self.max_header_bytes} bytes (server.max_header_bytes)",
            ),
            "busy": _raw(
                "503 Service Unavailable",
                "ServerBusy",
                f"this server process holds {self.max_connections} connections already "
                "(server.max_connections); retry later",
            ),
        }
        object.__setattr__(self, "responses", responses)


class _Coalescing:
    """A connection's transport whose writes within one turn of the event loop leave in one ``write``.

    The first write of a turn schedules the flush (``call_soon``: after the handler's step that wrote the
    head and the body); ``close`` sends what is pending first, ``abort`` drops it. Everything else is the
    underlying transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines, a header size and a connection limit.

    uvicorn builds one per connection as ``http_protocol_class(config=..., server_state=..., ...)``; pass
    ``functools.partial(GuardedHttpToolsProtocol, limits=...)`` as its ``http`` setting.
    """

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        # uvicorn's own keep-alive timer, with our (possibly fractional) seconds.
        self.timeout_keep_alive = limits.keep_alive_seconds  # type: ignore[assignment]
        self._timer: asyncio.TimerHandle | None = None
        self._phase = _IDLE
        self._header_bytes = 0  # request line and headers the parser reported
        self._partial = 0  # bytes of chunks after which the headers were still incomplete
        self._refused = False
        self._sent_bytes = False

    # --- deadlines ------------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, response: str | None) -> None:
        """Answer ``response`` (unless a response of this connection is under way) and close."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if response is not None and (cycle is None or cycle.response_complete or not cycle.response_started):
            self.transport.write(self.limits.responses[response])
        if cycle is not None and not cycle.response_complete:
            # What uvicorn does when the peer goes away: the handler's receive() sees a disconnect and
            # anything it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _expired(self) -> None:
        self._timer = None
        if self._phase == _HEADERS:
            self._refuse("header")
        elif self._phase == _BODY:
            self._refuse("body")
        elif self._phase == _IDLE:
            self._refuse("header" if self._sent_bytes else None)

    # --- asyncio.Protocol -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Coalescing(transport, self.loop))  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            self._refuse("busy")
            return
        self._arm(self.limits.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._sent_bytes = True
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._phase == _HEADERS:
            # Headers still partial: bound what the parser buffers before it reports a header.
            self._partial += len(data)
            if self._partial > self.limits.max_header_bytes:
                self._refuse("size")
            elif self._timer is None:  # a request that started after a keep-alive pause
                self._arm(self.limits.header_timeout_seconds)
        elif self._phase == _BODY and self._timer is None:
            self._arm(self.limits.body_timeout_seconds)

    # --- parser callbacks -----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEADERS
        self._header_bytes = 0
        self._partial = 0

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse("size")
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse("size")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._disarm()  # the header deadline (of a fresh connection, or armed after a keep-alive pause)
        self._phase = _BODY
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._phase = _APP
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._phase = _IDLE
        super().on_response_complete()


__all__ = ["ConnectionLimits", "GuardedHttpToolsProtocol"]
