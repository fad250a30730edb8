"""Slow clients against a real ``featurelake serve`` process: every slow socket is closed, normal requests
keep working (docs/reliability.md, "Slow clients").

The server runs with 1-second header, body and keep-alive timeouts, 8 connections and 2,048 header bytes.
The slow sockets keep trickling until the server closes them, so a deadline that restarted with every byte
would never fire; the tests assert on what the sockets see (a 408, or a plain close) and on the answers to
normal requests made meanwhile, never on how long anything took (the loops below only guard against a hang).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.online_helpers import append, project
from tests.server_process import ServeProcess

pytestmark = [pytest.mark.reliability]

LIMITS = {
    "FEATURELAKE_SERVER__HEADER_TIMEOUT_SECONDS": "1",
    "FEATURELAKE_SERVER__BODY_TIMEOUT_SECONDS": "1",
    "FEATURELAKE_SERVER__KEEP_ALIVE_SECONDS": "1",
    "FEATURELAKE_SERVER__MAX_CONNECTIONS": "8",
    "FEATURELAKE_SERVER__MAX_HEADER_BYTES": "2048",
}
BODY = b'{"features": ["user_features:amount_avg_1d"], "entities": {"user_id": [1]}}'
REQUEST = (
    b"POST /get-online-features HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
HANG_GUARD = 60.0  # seconds: a socket still open by then is a failure (the server's limits are 1 s)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-clients") / "proj"
    fl = project(root, "sqlite")
    try:
        append(fl, [(1, datetime.now(UTC) - timedelta(hours=1), 10.5)])
        fl.sync()
    finally:
        fl.close()
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServeProcess]:
    with ServeProcess(root, root.parent / "server.log", "--workers", "1", **LIMITS) as srv:
        yield srv
        assert "Traceback" not in srv.output(), srv.output()[-3000:]


def normal_request(srv: ServeProcess) -> int:
    """One lookup on a fresh connection."""
    r = httpx.post(f"{srv.base}/get-online-features", content=BODY, timeout=30)
    if r.status_code == 200:
        assert r.json()["results"][1]["values"] == [10.5]
    return r.status_code


class SlowSocket:
    """A client socket that sends ``first`` and then, on every tick, ``trickle`` until the server closes it."""

    def __init__(self, srv: ServeProcess, first: bytes, trickle: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        if first:
            self.sock.sendall(first)
        self.sock.setblocking(False)
        self.trickle = trickle
        self.received = b""
        self.closed = False

    def tick(self) -> None:
        if self.closed:
            return
        try:  # read first: a response the server wrote before closing must not be lost to a reset
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.closed = True
                    self.sock.close()
                    return
                self.received += data
        except BlockingIOError:
            pass
        except ConnectionResetError:
            self.closed = True
            self.sock.close()
            return
        if self.trickle:  # once closed, the next tick reads what is left and the end of the stream
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.sock.send(self.trickle)


def run_until_closed(srv: ServeProcess, sockets: list[SlowSocket]) -> list[int]:
    """Tick the slow sockets every 0.2 s, with a normal request each time, until all are closed."""
    statuses: list[int] = []
    deadline = time.monotonic() + HANG_GUARD
    while not all(s.closed for s in sockets):
        assert time.monotonic() < deadline, "slow sockets still open: " + ", ".join(
            repr(s.received[:80]) for s in sockets if not s.closed
        )
        for s in sockets:
            s.tick()
        statuses.append(normal_request(srv))
        time.sleep(0.2)
    return statuses


def test_slow_sockets_are_closed_while_normal_requests_keep_working(server: ServeProcess) -> None:
    idle = SlowSocket(server, b"")  # connects and says nothing
    headers = SlowSocket(
        server, b"POST /get-online-features HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n"
    )
    body = SlowSocket(
        server,
        b"POST /get-online-features HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{",
        b" ",
    )
    keep_alive = SlowSocket(server, REQUEST)  # one whole request, then idle on the kept-alive connection
    statuses = run_until_closed(server, [idle, headers, body, keep_alive])

    assert statuses and set(statuses) == {200}, statuses  # normal requests were served throughout
    assert idle.received == b""  # a connection that never sent a byte is closed without an answer
    assert headers.received.startswith(b"HTTP/1.1 408 "), headers.received
    assert b"server.header_timeout_seconds" in headers.received
    assert body.received.startswith(b"HTTP/1.1 408 "), body.received
    assert b"server.body_timeout_seconds" in body.received
    assert keep_alive.received.startswith(b"HTTP/1.1 200 ") and keep_alive.received.count(b"HTTP/1.1") == 1
    assert b"10.5" in keep_alive.received


def test_a_request_after_a_keep_alive_pause_has_its_own_header_deadline(server: ServeProcess) -> None:
    """Headers trickled on a connection that already served a request: 408 and closed as well."""
    s = SlowSocket(server, REQUEST)
    while b"10.5" not in s.received:  # the first response arrived
        s.tick()
        assert not s.closed, s.received
        time.sleep(0.05)
    s.received = b""
    s.sock.send(b"POST /get-online-features HTTP/1.1\r\n")
    s.trickle = b"X-Slow: 1\r\n"
    run_until_closed(server, [s])
    assert s.received.startswith(b"HTTP/1.1 408 "), s.received


def test_connections_over_the_limit_are_refused_at_once(root: Path) -> None:
    """A server whose deadlines are far away, so only the limit can close a connection here."""
    patient = {**LIMITS, "FEATURELAKE_SERVER__HEADER_TIMEOUT_SECONDS": "600"}
    with ServeProcess(root, root.parent / "limit.log", "--workers", "1", **patient) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=HANG_GUARD) for _ in range(8)]
        try:
            for _ in range(3):  # each connection over the limit: answered and closed, the held ones stay
                with socket.create_connection(("127.0.0.1", srv.port), timeout=HANG_GUARD) as extra:
                    answer = read_to_end(extra)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert b"server.max_connections" in answer
            held[0].sendall(REQUEST)  # a held connection is served normally
            assert b"10.5" in read_one_response(held[0])
        finally:
            for s in held:
                s.close()
        # With the held connections gone, new ones are served again.
        deadline = time.monotonic() + HANG_GUARD
        while normal_request_or_refused(srv) != 200:
            assert time.monotonic() < deadline, "the closed connections were never released"
            time.sleep(0.1)
        assert "Traceback" not in srv.output(), srv.output()[-3000:]


def normal_request_or_refused(srv: ServeProcess) -> int:
    """A lookup on a fresh connection; 0 when the server closed it unanswered (its limit was reached)."""
    try:
        return normal_request(srv)
    except httpx.TransportError:
        return 0


def test_oversized_headers_are_431_and_closed(server: ServeProcess) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD) as s:
        s.sendall(big)
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert b"server.max_header_bytes" in answer
    assert normal_request(server) == 200


def test_a_header_that_never_ends_is_cut_at_the_limit(server: ServeProcess) -> None:
    """3,000 bytes of one header, no line end: refused once the bytes buffered pass the limit, not later."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: " + b"a" * 3000)
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert normal_request(server) == 200


def read_one_response(s: socket.socket) -> bytes:
    """One whole HTTP response on a keep-alive connection: headers and body may arrive in separate segments."""
    out = b""
    while b"\r\n\r\n" not in out:
        data = s.recv(65536)
        assert data, out
        out += data
    head, _, body = out.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        data = s.recv(65536)
        assert data, out + body
        body += data
    return head + b"\r\n\r\n" + body


def read_to_end(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    out = b""
    while True:
        data = s.recv(65536)
        if not data:
            return out
        out += data


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("header_timeout_seconds", "0"),
        ("body_timeout_seconds", "-1"),
        ("keep_alive_seconds", "soon"),
        ("max_connections", "0"),
        ("max_header_bytes", "100"),
        ("workers", "0"),
    ],
)
def test_a_bad_limit_is_refused_naming_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    from featurelake.config import ProjectConfig
    from featurelake.errors import ConfigError

    (tmp_path / "featurelake.yaml").write_text("project: limits\n")
    monkeypatch.setenv(f"FEATURELAKE_SERVER__{key.upper()}", value)
    with pytest.raises(ConfigError, match=f"server.{key}"):
        ProjectConfig.load(tmp_path)
