"""The Redis online store: one string key per (view, entity), written by a Lua script, read with one MGET.

Layout (``<s>`` is the store's scope token ``<project>.<namespace>.<digest>``, ``serving/scope.py``: the
digest covers the project, the catalog's name, URI and warehouse, and the namespace; ``<s>`` holds no ``:``)::

    fl:<s>:<view>:<key>     "<event_ts µs>|<seq>|<JSON object of the row's features>"
    fl:<s>:#sync:<view>     the view's sync watermark (JSON); '#' cannot occur in a view name
    fl:<s>:#newest:<view>   the newest event time (µs) written to the view (raised by every write)

Keys of the layout before scopes (``fl:<project>:<view>:<key>``, ``fl:<project>:#sync:<view>``) are never
read; the first sync of a view in its scope removes that view's old keys.

A single string per entity makes a lookup of any number of entities across any number of views one
``MGET``. Writes go through a Lua script that compares (event_ts, seq) with the stored prefix and writes only
when newer, so the rule is atomic per key on the server; many keys share one script call and many calls
share one pipelined round trip. Keys of one call may live in different hash slots, so this store targets a
single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from featurelake.config import reveal
from featurelake.errors import OnlineStoreUnavailableError
from featurelake.serving.base import OnlineStore, Records, Stored, Watermark
from featurelake.serving.scope import StoreScope, hide_password

if TYPE_CHECKING:
    from featurelake.config import ProjectConfig

T = TypeVar("T")

DEFAULT_URL = "redis://127.0.0.1:6379/0"

# ARGV: force flag, then the full value per key (``<event_ts>|<seq>|<payload>``): the script reads a record's
# event time and sequence number from the value's prefix, so a key costs one argument to send. The stored prefix
# is at most 17 + 1 + 19 + 1 bytes, so GETRANGE reads it without copying large rows.
_WRITE_LUA = """
local force = ARGV[1] == '1'
local changed = 0
local function stamp(v)
  local s1 = string.find(v, '|', 1, true)
  local s2 = string.find(v, '|', s1 + 1, true)
  return tonumber(string.sub(v, 1, s1 - 1)), tonumber(string.sub(v, s1 + 1, s2 - 1))
end
for i = 1, #KEYS do
  local value = ARGV[i + 1]
  local write = force
  if not write then
    local cur = redis.call('GETRANGE', KEYS[i], 0, 47)
    if cur == '' then
      write = true
    else
      local cts, cseq = stamp(cur)
      local ts, seq = stamp(value)
      write = ts > cts or (ts == cts and seq > cseq)
    end
  end
  if write then
    redis.call('SET', KEYS[i], value)
    changed = changed + 1
  end
end
return changed
"""

# KEYS[1]: the view's newest-event marker; ARGV[1]: the newest event time of a write. Only ever raised.
_NEWEST_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur or tonumber(ARGV[1]) > tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
"""

#: Keys per script call: big enough to amortise the call, small enough not to stall Redis (~1 ms).
KEYS_PER_CALL = 500
_pack: Callable[..., Any] | None
try:  # hiredis (the redis extra) packs a command in C; redis-py encodes each argument in Python
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is part of the redis extra
    _pack = None
_TOKEN_LIKE = re.compile(r".*\.[0-9a-f]{16}")


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class RedisStore(OnlineStore):
    """Online store in Redis (see the module docstring for the layout and the write script)."""

    type_name = "redis"

    def __init__(
        self,
        url: str | None,
        scope: StoreScope,
        *,
        connect_timeout: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url or DEFAULT_URL
        self.scope = scope
        try:
            self.client: redis.Redis = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                # One immediate retry reconnects after a Redis restart; more would only delay the 503.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
            )
        except ValueError as exc:
            raise OnlineStoreUnavailableError(
                f"online_store.url {self.location!r} is not a Redis URL ({exc}); use redis://host:port/db"
            ) from exc
        self._script = self.client.register_script(_WRITE_LUA)
        self._newest_script = self.client.register_script(_NEWEST_LUA)
        self._prefix = f"fl:{scope.token}:"
        self._legacy_prefix = f"fl:{scope.project}:"
        self._sync_run_ids: dict[str, str] = {}
        # Lookups' own connection (see _mget), made on first use, per process.
        self._lookup_conn: AbstractConnection | None = None
        self._lookup_lock = threading.Lock()
        self._lookup_pid = 0

    @classmethod
    def from_config(cls, config: ProjectConfig) -> RedisStore:
        cfg = config.settings.online_store
        return cls(
            reveal(cfg.url),
            StoreScope.of(config),
            connect_timeout=cfg.connect_timeout_seconds,
            timeout=cfg.timeout_seconds,
        )

    @property
    def location(self) -> str:
        return hide_password(self.url)

    def _key(self, view: str, key: str) -> str:
        return f"{self._prefix}{view}:{key}"

    def _run(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise OnlineStoreUnavailableError(
                f"online store {self.location} (redis) is unreachable while trying to {what}: {exc}; "
                "check that Redis is running and online_store.url (FEATURELAKE_ONLINE_STORE__URL) is right"
            ) from exc
        except RedisError as exc:
            raise OnlineStoreUnavailableError(
                f"online store {self.location} (redis) refused to {what}: {exc}; check the Redis server (its log, "
                "maxmemory, ACL rules) and run the command again"
            ) from exc

    # --- OnlineStore ----------------------------------------------------------------------------------
    def write(self, view: str, records: Records, *, force: bool = False) -> int:
        return self._run(functools.partial(self._write, view, records, force), f"write {view}")

    def _write(self, view: str, records: Records, force: bool) -> int:
        flag = "1" if force else "0"
        prefix = f"{self._prefix}{view}:"
        calls: list[tuple[list[str], list[str]]] = []
        for start in range(0, len(records), KEYS_PER_CALL):
            stop = start + KEYS_PER_CALL
            keys = [prefix + k for k in records.keys[start:stop]]
            values = [
                f"{ts}|{seq}|{payload}"
                for ts, seq, payload in zip(
                    records.event_ts[start:stop],
                    records.seqs[start:stop],
                    records.payloads[start:stop],
                    strict=True,
                )
            ]
            calls.append((keys, [flag, *values]))
        if len(records):
            # A record the script refused is no newer than its key's stored event, which raised the marker.
            newest = (self._newest_script, [self._newest_key(view)], [str(max(records.event_ts))])
        if _pack is not None and len(records):
            return self._write_packed([(self._script, k, a) for k, a in calls] + [newest])
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            self._script(keys=keys, args=args, client=pipe)
        if len(records):
            script, keys, args = newest
            script(keys=keys, args=args, client=pipe)
        return sum(int(n) for n in pipe.execute())

    def _write_packed(self, calls: list[tuple[Script, list[str], list[str]]]) -> int:
        """The script calls of one write, packed by hiredis in C and sent on one pooled connection.

        A pipeline packs each argument in Python (its encoder, per argument): for a sync of 50k keys that was
        two thirds of the time spent writing. Every call is idempotent (a record replaces only an older one, or
        the same one when forced), so a connection that fails, or a server that lost the scripts (NOSCRIPT
        after a restart), is simply sent the whole write again, once, on a fresh connection.
        """
        assert _pack is not None
        packed = [
            _pack(("EVALSHA", script.sha, str(len(keys)), *keys, *args)) for script, keys, args in calls
        ]
        pool = self.client.connection_pool
        for attempt in (1, 2):
            conn = pool.get_connection()
            try:
                conn.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                failure: ResponseError | None = None
                for _ in packed:  # read every reply, so the connection stays in step even after an error
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:
                        failure = failure or exc
            except (RedisConnectionError, RedisTimeoutError):
                conn.disconnect()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
            if failure is None:
                return sum(int(n) for n in replies)
            if not isinstance(failure, NoScriptError) or attempt == 2:
                raise failure
            for script in {id(s): s for s, _, _ in calls}.values():  # a restarted server: load them again
                self.client.script_load(script.script)
        raise AssertionError("unreachable")  # pragma: no cover

    def delete(self, view: str, keys: Sequence[str]) -> int:
        def go() -> int:
            removed = 0
            for start in range(0, len(keys), 10_000):
                chunk = [self._key(view, k) for k in keys[start : start + 10_000]]
                if chunk:
                    removed += int(self.client.unlink(*chunk))
            return removed

        return self._run(go, f"delete keys of {view}")

    def read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[Stored]]:
        names = [self._key(view, k) for view, keys in requests for k in keys]
        if not names:
            return [[] for _ in requests]
        raw: list[Any] = self._run(lambda: self._mget(names), "read features")
        out: list[list[Stored]] = []
        pos = 0
        for _, keys in requests:
            part: list[Stored] = []
            for value in raw[pos : pos + len(keys)]:
                if value is None:
                    part.append(None)
                else:
                    ts, _seq, payload = value.split(b"|", 2)
                    part.append((int(ts), payload))
            out.append(part)
            pos += len(keys)
        return out

    def _mget(self, names: list[str]) -> list[Any]:
        """``MGET names`` on the lookups' own connection: sent and read straight on it.

        A lookup is one command, so redis-py's client layer (taking a connection from the pool and giving it
        back under its lock, with a readiness poll, the retry wrapper and its instrumentation hooks) cost as
        much CPU as the round trip itself (~16 µs of ~30). The connection is this store's alone, made with
        the pool's settings (address, credentials, TLS, timeouts); a thread that finds it busy, or a forked
        child, uses the pool. As the client does (``Retry(NoBackoff(), 1)``), a connection or timeout error
        is tried once more on a fresh connection; any failure drops the connection, so a reply left half
        read is never taken for the next one's.
        """
        if not self._lookup_lock.acquire(blocking=False):
            return self.client.mget(names)
        try:
            conn = self._lookup_conn
            if conn is None or self._lookup_pid != os.getpid():
                pool = self.client.connection_pool
                conn = self._lookup_conn = pool.connection_class(**pool.connection_kwargs)
                self._lookup_pid = os.getpid()
            packed = [_pack(("MGET", *names))] if _pack is not None else conn.pack_command("MGET", *names)
            for attempt in (1, 2):
                try:
                    conn.send_packed_command(packed, check_health=False)
                    reply: list[Any] = conn.read_response()
                    return reply
                except (RedisConnectionError, RedisTimeoutError):
                    conn.disconnect()
                    if attempt == 2:
                        raise
                except BaseException:
                    conn.disconnect()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._lookup_lock.release()

    def keys(self, view: str) -> Iterator[str]:
        prefix = f"{self._prefix}{view}:"
        pattern = _glob_escape(prefix) + "*"
        found: list[bytes] = self._run(
            lambda: list(self.client.scan_iter(match=pattern, count=10_000)), f"list keys of {view}"
        )
        n = len(prefix)
        return iter(k.decode()[n:] for k in found)

    def _newest_key(self, view: str) -> str:
        return f"{self._prefix}#newest:{view}"

    def newest_event_ts(self, view: str) -> int | None:
        raw = self._run(lambda: self.client.get(self._newest_key(view)), f"read the newest event of {view}")
        if raw is not None:
            return int(raw)
        # Keys written before the marker existed: read them once and keep the answer (never lowering a
        # marker a write set meanwhile).
        newest = super().newest_event_ts(view)
        if newest is not None:
            self._run(
                lambda: self._newest_script(keys=[self._newest_key(view)], args=[newest]),
                f"record the newest event of {view}",
            )
        return newest

    def _watermark_key(self, view: str) -> str:
        return f"{self._prefix}#sync:{view}"

    def _server_run_id(self) -> str:
        info = self._run(lambda: self.client.info("server"), "read the server's run id")
        return str(info.get("run_id", ""))

    def get_watermark(self, view: str) -> Watermark | None:
        # A sync starts by reading its watermark: remember which Redis process it talks to, so a server
        # that restarted (possibly empty) mid-sync is noticed before the watermark moves.
        self._sync_run_ids[view] = self._server_run_id()
        raw = self._run(lambda: self.client.get(self._watermark_key(view)), f"read the watermark of {view}")
        return Watermark.from_dict(json.loads(raw)) if raw else None

    def set_watermark(self, view: str, watermark: Watermark) -> None:
        started = self._sync_run_ids.pop(view, None)
        if started is not None and started != self._server_run_id():
            raise OnlineStoreUnavailableError(
                f"redis at {self.location} restarted while {view} was syncing, so keys written before the "
                "restart may be gone; the watermark was not advanced: run `featurelake sync` again "
                "(it resyncs what is missing)"
            )
        self._run(
            lambda: self.client.set(self._watermark_key(view), json.dumps(watermark.to_dict())),
            f"write the watermark of {view}",
        )

    # --- the layout before scopes -----------------------------------------------------------------------
    def _legacy_ambiguous(self) -> bool:
        """A project named like a scope token: its old keys cannot be told from another scope's."""
        return _TOKEN_LIKE.fullmatch(self.scope.project) is not None

    def has_legacy(self, view: str) -> bool:
        if self._legacy_ambiguous():
            return False
        # The old watermark marks a view that was synced in the old layout: one EXISTS, no keyspace scan.
        key = f"{self._legacy_prefix}#sync:{view}"
        return bool(self._run(lambda: self.client.exists(key), f"look for old keys of {view}"))

    def drop_legacy(self, view: str) -> int:
        if self._legacy_ambiguous():
            return 0
        prefix = f"{self._legacy_prefix}{view}:"

        def go() -> int:
            removed = 0
            batch: list[bytes] = []
            for k in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=10_000):
                batch.append(k)
                if len(batch) >= 10_000:
                    removed += int(self.client.unlink(*batch))
                    batch = []
            if batch:
                removed += int(self.client.unlink(*batch))
            self.client.unlink(f"{self._legacy_prefix}#sync:{view}")
            return removed

        return self._run(go, f"remove old keys of {view}")

    def ping(self) -> None:
        self._run(self.client.ping, "ping")

    def close(self) -> None:
        with self._lookup_lock:
            if self._lookup_conn is not None and self._lookup_pid == os.getpid():
                self._lookup_conn.disconnect()
            self._lookup_conn = None
        self.client.close()


__all__ = ["DEFAULT_URL", "RedisStore"]
