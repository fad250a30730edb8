"""``featurelake serve`` refusals that need no running server: workers, a missing HTTP parser, and the
server's shape for Starlette's own refusals."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

import featurelake
from featurelake.errors import UsageError
from featurelake.serving import server
from tests.helpers import make_project


@pytest.fixture
def project(tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    with featurelake.open(make_project(tmp_path / "proj")) as fl:
        yield fl


def test_workers_below_one_are_refused_by_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from featurelake.cli.main import main

    root = make_project(tmp_path / "proj")
    with pytest.raises(SystemExit) as exit_info:
        main(["-C", str(root), "serve", "--workers", "0"])
    assert exit_info.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_workers_below_one_are_refused_by_serve(project: featurelake.Featurelake) -> None:
    with pytest.raises(UsageError, match="--workers must be at least 1, got 0"):
        server.serve(project.project, workers=0)


def test_several_workers_need_the_app_factory(project: featurelake.Featurelake) -> None:
    with pytest.raises(UsageError, match="worker_app"):
        server.serve(project.project, workers=2)


def test_a_missing_http_parser_names_the_extra(
    project: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("featurelake.serving.guard", "uvicorn.protocols.http.httptools_impl"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "httptools", None)  # import httptools now raises ImportError
    with pytest.raises(UsageError, match=r"needs httptools: pip install 'featurelake\[server\]'"):
        server.serve(project.project, workers=1)


@pytest.mark.parametrize(
    ("status", "error", "detail"),
    [
        (404, "NotFound", "no route for GET /x"),
        (405, "MethodNotAllowed", "no route for GET /x"),
        (413, "HTTPError", "too large"),
    ],
)
def test_starlette_refusals_come_in_the_server_shape(status: int, error: str, detail: str) -> None:
    request = Request({"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""})
    response = server._http_exception(request, HTTPException(status, "too large"))
    assert response.status_code == status
    body = orjson.loads(bytes(response.body))
    assert body["error"] == error and body["detail"].startswith(detail), body


def test_lookups_run_in_the_event_loop_only_once_their_shape_is_known() -> None:
    """The first request of a shape and large requests go to a worker thread; known small ones stay in the loop."""
    import asyncio
    import threading

    ran_in: list[bool] = []

    class Recording:
        def get_online_features(
            self, features: object, entities: object, **options: object
        ) -> dict[str, object]:
            ran_in.append(threading.current_thread() is threading.main_thread())
            return {"features": features}

    lookups = server._Lookups(Recording())  # type: ignore[arg-type]
    small, large = {"user_id": [1, 2]}, {"user_id": list(range(server._Lookups.INLINE_ENTITIES + 1))}

    async def run() -> None:
        await lookups(["v:a"], small, full_feature_names=False)  # new shape: thread
        await lookups(["v:a"], small, full_feature_names=False)  # known: loop
        await lookups(["v:a"], small, full_feature_names=True)  # another shape: thread
        await lookups(["v:a"], large, full_feature_names=False)  # large: thread
        await lookups(None, small, feature_service="svc")  # a feature service: thread, then loop
        await lookups(None, small, feature_service="svc")
        await lookups([["not", "a", "string"]], small)  # unhashable garbage never becomes a known shape
        await lookups([["not", "a", "string"]], small)

    asyncio.run(run())
    assert ran_in == [False, True, False, False, False, True, False, False]


class _RecordingTransport:
    """What the coalescing transport hands to the socket's transport."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_a_response_written_in_pieces_leaves_in_one_write() -> None:
    """uvicorn writes a response's head and body separately; they go to the socket in one write at the end
    of the loop's turn, close() sends what is pending first, abort() drops it."""
    import asyncio

    from featurelake.serving.guard import _Coalescing

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes], int, str]:
        loop = asyncio.get_running_loop()
        raw = _RecordingTransport()
        t = _Coalescing(raw, loop)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        t.write(b"{}")
        pending = t.get_write_buffer_size()
        before = list(raw.writes)
        await asyncio.sleep(0)  # the turn ends
        one_turn = list(raw.writes)
        t.write(b"last")
        t.close()
        closed = list(raw.writes)
        t2 = _Coalescing(_RecordingTransport(), loop)  # type: ignore[arg-type]
        t2.write(b"dropped")
        t2.abort()
        await asyncio.sleep(0)
        assert t2._transport.writes == []  # type: ignore[attr-defined]
        return before, one_turn, closed, pending, t.get_extra_info("peername")

    before, one_turn, closed, pending, info = asyncio.run(scenario())
    assert before == [] and pending == 40
    assert one_turn == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert closed == [*one_turn, b"last"]
    assert info == "info peername"
