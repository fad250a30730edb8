"""Feast's push: ``POST /push`` on ``featurelake serve`` and ``fl.push(view, rows, to=...)``.

A push names a view (Feast's ``push_source_name``), gives rows (every column of the view's table: its join
keys, its timestamp field and its fields) and says where they go:

- ``online``: written to the online store before the push returns (the latest row per key; an older event
  never replaces a newer one), so the next lookup sees them;
- ``offline``: appended to the write-ahead buffer (``streaming/buffer.py``, fsynced before the push returns)
  and published to the view's Iceberg table by the flusher in micro-batches (``push.batch_rows`` rows or
  ``push.batch_seconds`` seconds, whichever comes first), each through Write-Audit-Publish with the view's
  audits (``streaming/microbatch.py``);
- ``online_and_offline``: both (buffered first, so a row the online store served is never lost offline).

Rows that do not fit the view are refused whole (RequestError, HTTP 422) before anything is written.
A micro-batch the audit refuses leaves main unchanged and its rows in ``<namespace>._rejected``; the
flusher logs the verdict. Rows whose (key, event timestamp) main already holds are dropped, so pushing the
same rows again (a retry) or replaying the buffer after a crash never duplicates them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featurelake.errors import FeaturelakeError, RequestError, UsageError
from featurelake.lakehouse import lineage
from featurelake.streaming.buffer import PushBuffer
from featurelake.streaming.microbatch import MicroBatchResult, MicroBatchWriter

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

log = logging.getLogger("featurelake.push")

PUSH_MODES = ("online", "offline", "online_and_offline")
#: Snapshot summary property of a push micro-batch: the id of the last buffer entry it holds.
BUFFER_ID = "featurelake.push.buffer-id"


@dataclass
class PushResult:
    """What one push did: rows accepted, buffered for the offline store, and online keys changed."""

    view: str
    to: str
    rows: int
    buffered: int = 0
    online_keys: int = 0
    published: list[MicroBatchResult] = field(default_factory=list)
    """Micro-batches published by this call (``fl.push`` flushes its offline rows before returning)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "to": self.to,
            "rows": self.rows,
            "buffered": self.buffered,
            "online_keys": self.online_keys,
            "published": [m.to_dict() for m in self.published],
        }


def check_mode(to: object) -> str:
    if to not in PUSH_MODES:
        raise RequestError(f"'to' must be one of {', '.join(PUSH_MODES)}, got {to!r}")
    return str(to)


class PushService:
    """Pushes into a project's views: online writes now, offline rows through the buffer and micro-batches.

    ``store``: the online store to write (``online``, ``online_and_offline``); needed only for those.
    :meth:`start` runs the flusher thread (``featurelake serve``); without it, :meth:`flush` publishes
    what is due (``fl.push`` calls it with ``force=True``).
    """

    def __init__(self, project: Project, store: OnlineStore | None = None) -> None:
        self.project = project
        self.store = store
        settings = project.config.settings.push
        self.batch_rows = settings.batch_rows
        self.batch_seconds = settings.batch_seconds
        self._buffer: PushBuffer | None = None
        self._buffer_lock = threading.Lock()
        self._writers: dict[str, tuple[MicroBatchWriter, threading.Lock]] = {}
        self._writers_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: dict[str, float] = {}

    @property
    def buffer(self) -> PushBuffer:
        with self._buffer_lock:
            if self._buffer is None:
                directory = self.project.config.path(self.project.config.settings.push.buffer)
                self._buffer = PushBuffer(directory)
            return self._buffer

    def _writer(self, view: str) -> tuple[MicroBatchWriter, threading.Lock]:
        with self._writers_lock:
            found = self._writers.get(view)
            if found is None:
                if view not in self.project.definitions.views:
                    known = ", ".join(sorted(self.project.definitions.views)) or "none"
                    raise RequestError(
                        f"no feature view {view!r} to push to (push_source_name names a view: {known})", 404
                    )
                found = (MicroBatchWriter(self.project, view, online=self.store), threading.Lock())
                self._writers[view] = found
            return found

    def push(self, view: str, rows: Any, to: str = "online") -> PushResult:
        """Push ``rows`` (Arrow, pandas, a list of dicts or a dict of columns) to ``view``; see the module doc."""
        to = check_mode(to)
        if not isinstance(view, str) or not view:
            raise RequestError('"push_source_name" must name a feature view')
        writer, lock = self._writer(view)
        frame = writer.conform(rows)
        result = PushResult(view, to, frame.num_rows)
        if frame.num_rows == 0:
            return result
        if to != "online":
            self.buffer.append(view, frame)  # durable before anything is acknowledged
            result.buffered = frame.num_rows
        if to != "offline":
            if self.store is None:
                raise UsageError("pushing to the online store needs one: this push service has none")
            with lock:
                result.online_keys = writer.write_online(frame)
        if result.buffered and self._thread is not None:
            self._wake.set()  # the flusher checks whether a micro-batch is due
        return result

    def flush(self, *, force: bool = False, view: str | None = None) -> list[MicroBatchResult]:
        """Publish every view's buffered rows that are due (all of them with ``force``) as micro-batches.

        Returns the micro-batches written; a view whose batch could not be published (catalog or storage
        unavailable) keeps its rows buffered for the next flush (logged, and raised when ``force``).
        """
        out: list[MicroBatchResult] = []
        # Forced (fl.push): wait for another process's flush to finish rather than leave the rows to it.
        with self._flush_lock, self.buffer.flush_lock(wait=force) as mine:
            if not mine:
                return out  # another process is flushing the shared buffer
            now = time.time()
            for pending in self.buffer.pending():
                if view is not None and pending.view != view:
                    continue
                due = pending.rows >= self.batch_rows or now - pending.oldest >= self.batch_seconds
                if not (force or due):
                    continue
                try:
                    out.extend(self._flush_view(pending.view, force=force))
                except FeaturelakeError as exc:
                    if force:
                        raise
                    self._warn(pending.view, f"buffered rows of {pending.view} stay buffered: {exc}")
        return out

    def _flush_view(self, view: str, *, force: bool) -> list[MicroBatchResult]:
        """Publish ``view``'s buffered rows batch after batch while a full batch (or, ``force``, any) waits."""
        out: list[MicroBatchResult] = []
        writer, lock = self._writer(view)
        while True:
            batch = self.buffer.take(view, self.batch_rows)
            if batch is None:
                return out
            with lock:
                try:
                    # Offline only: rows pushed online_and_offline are online already, and `featurelake
                    # sync` brings what main holds to the online store as for any other commit.
                    result = writer.write(
                        batch.rows,
                        run_id=lineage.new_run_id(),
                        summary={BUFFER_ID: str(batch.last_id)},
                        online=False,
                    )
                except RequestError as exc:  # the view changed since the rows were buffered
                    result = writer.reject(batch.rows, lineage.new_run_id(), f"rows no longer fit: {exc}")
            self.buffer.remove(view, batch.last_id)
            out.append(result)
            if result.status == "refused":
                log.warning("push micro-batch of %s refused: %s", view, "; ".join(result.notes))
            more = self.buffer.pending()
            waiting = next((p for p in more if p.view == view), None)
            if waiting is None or not (force or waiting.rows >= self.batch_rows):
                return out

    def _warn(self, view: str, message: str, every: float = 30.0) -> None:
        now = time.monotonic()
        if now - self._warned.get(view, -every) >= every:
            self._warned[view] = now
            log.warning("%s", message)

    def start(self) -> Callable[[], None]:
        """Run the flusher in a thread (it publishes rows left by an earlier process first); returns stop."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="featurelake-push-flusher", daemon=True)
            self._thread.start()
        return self.stop

    def _loop(self) -> None:
        tick = min(self.batch_seconds, 1.0)
        while not self._stop.is_set():
            try:
                self.flush()
            except Exception:  # never let the flusher die: the rows stay buffered
                log.exception("push flusher failed; buffered rows are kept and retried")
            self._wake.wait(tick)
            self._wake.clear()

    def stop(self) -> None:
        """Stop the flusher (buffered rows stay on disk and are published by the next start)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=60)

    def close(self) -> None:
        self.stop()
        with self._writers_lock:
            for writer, _ in self._writers.values():
                writer.close()
            self._writers.clear()
        if self._buffer is not None:
            self._buffer.close()


__all__ = ["BUFFER_ID", "PUSH_MODES", "PushResult", "PushService", "check_mode"]
