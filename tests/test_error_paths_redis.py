"""A Redis that answers but refuses the sync's writes (here: out of memory under ``maxmemory`` with the
``noeviction`` policy) stops the sync with an ``OnlineStoreUnavailableError`` that names the store and the
way out; the store keeps what it had and the sync's watermark does not move, so the next sync writes all of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import featurelake
from featurelake.errors import OnlineStoreUnavailableError
from tests.helpers import day, make_project
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    own = RedisServer(tmp_path / "redis").start()
    try:
        yield own
    finally:
        own.kill()


def test_a_redis_that_refuses_writes_stops_the_sync_and_loses_nothing(
    tmp_path: Path, server: RedisServer
) -> None:
    config = f"project: full\nnamespace: features\nonline_store:\n  type: redis\n  url: {server.url}\n"
    with featurelake.open(make_project(tmp_path / "p", config=config)) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(5))
        client = server.client()
        client.set("filler", b"x" * 4_000_000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")  # below what the server holds: every write is refused
        before = sorted(client.keys("*"))
        with pytest.raises(OnlineStoreUnavailableError) as ei:
            fl.sync()
        msg = str(ei.value)
        assert f"online store {server.url} (redis) refused to write user_features" in msg, msg
        assert "command not allowed when used memory > 'maxmemory'" in msg, msg
        assert "check the Redis server (its log, maxmemory, ACL rules)" in msg, msg
        assert sorted(client.keys("*")) == before  # nothing written, no watermark moved
        client.config_set("maxmemory", "0")  # the server fixed: the next sync writes every key
        (result,) = fl.sync()
        assert result.keys > 0 and fl.online.store.count("user_features") == result.keys
