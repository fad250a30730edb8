"""Stream ingestion: ``featurelake ingest VIEW --from URL`` consumes a broker into the view, in micro-batches.

One loop, at least once, with idempotent writes::

    resume = newest offset of this source on main's history (snapshot summary featurelake.offset.<source>)
    repeat:
        fetch until the batch holds ingest.batch_rows messages or ingest.batch_seconds passed since its first
        skip messages at or before `resume` (their batch was committed; the consumer died before acking)
        decode the rest (streaming/messages.py); keep unreadable ones aside in <namespace>._rejected
        MicroBatchWriter.write(rows, summary={featurelake.offset.<source>: the batch's last offset, ...})
            -> deduplicated on (key, event timestamp), audited and published with WAP, then the online store
        acknowledge the batch to the broker (only now), record the lag and counts

A crash anywhere before the acknowledgement makes the broker deliver the batch again; the offset in the
snapshot summary (or, for a batch that committed nothing, the (key, event time) anti-join) keeps it from
being written twice. Back-pressure: a fetch asks for at most what the batch has room for, and nothing is
fetched while a batch is being written, so at most ``batch_rows`` messages are in flight.

A batch the audit refuses stays off main, its rows go to ``<namespace>._rejected`` with the verdict, and
it is acknowledged (``ingest.on_refused: continue``), or the consumer stops with exit 1 without acknowledging
it (``stop``). A stop request (SIGTERM, Ctrl-C: :meth:`Ingestor.stop`) abandons a batch still being
collected, unacknowledged, and lets a batch being written finish and be acknowledged.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow.compute as pc

from featurelake.errors import AuditFailed, UsageError
from featurelake.lakehouse import lineage
from featurelake.streaming.brokers import Broker, Message, Position
from featurelake.streaming.messages import MessageDecoder, bad_rows
from featurelake.streaming.microbatch import (
    REJECTED_TABLE,
    MicroBatchResult,
    MicroBatchWriter,
    last_committed,
)

if TYPE_CHECKING:
    from featurelake.config import IngestConfig
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

#: Snapshot summary: ``featurelake.offset.<source>`` = the newest offset the snapshot's batch consumed.
OFFSET_PREFIX = "featurelake.offset."
#: Snapshot summary: the stream a snapshot's rows came from, and its batch's first offset and size.
SOURCE = "featurelake.stream-source"
FIRST_OFFSET = "featurelake.stream-first-offset"
MESSAGES = "featurelake.stream-messages"
#: ``featurelake.operation`` of an ingested batch's snapshot.
OPERATION = "ingest"

Stopped = Literal["max-batches", "idle", "stop-requested", "refused"]


def offset_key(source: str) -> str:
    return OFFSET_PREFIX + source


@dataclass
class IngestSettings:
    """The knobs of one run: ``ingest:`` in featurelake.yaml, overridden by CLI flags."""

    batch_rows: int = 10_000
    batch_seconds: float = 5.0
    poll_seconds: float = 1.0
    online: bool = True
    on_refused: Literal["continue", "stop"] = "continue"
    max_batches: int | None = None
    until_idle: bool = False
    log_batches: int = 10
    """Append the batches' audit-log and statistics rows (spooled durably meanwhile) every this many batches,
    when the stream goes idle and when the consumer stops (1: after every batch)."""

    @classmethod
    def from_config(cls, cfg: IngestConfig, **overrides: Any) -> IngestSettings:
        base = cls(
            cfg.batch_rows,
            cfg.batch_seconds,
            cfg.poll_seconds,
            cfg.online,
            cfg.on_refused,
            log_batches=cfg.log_batches,
        )
        for name, value in overrides.items():
            if name not in cls.__dataclass_fields__:
                raise UsageError(
                    f"unknown ingest setting {name!r}: use {', '.join(cls.__dataclass_fields__)}"
                )
            if value is not None:
                setattr(base, name, value)
        if base.batch_rows < 1 or base.batch_seconds <= 0 or base.poll_seconds <= 0:
            raise UsageError("batch rows must be >= 1 and batch/poll seconds > 0")
        if base.max_batches is not None and base.max_batches < 1:
            raise UsageError("--max-batches must be >= 1")
        if base.log_batches < 1:
            raise UsageError("log_batches must be >= 1")
        return base


@dataclass
class BatchOutcome:
    """What one micro-batch of messages became."""

    run_id: str
    messages: int
    first_offset: str
    last_offset: str
    skipped: int = 0
    """Messages at or before the committed offset (their rows are on main): acknowledged, not written."""
    bad: int = 0
    """Unreadable messages kept aside in ``<namespace>._rejected``."""
    status: str = "empty"
    """The micro-batch writer's status (published, refused, duplicate, empty)."""
    written: int = 0
    duplicates: int = 0
    refused: int = 0
    online_keys: int = 0
    snapshot_id: int | None = None
    lag_seconds: float | None = None
    """Seconds from the batch's newest event to its visibility (online store, else main)."""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "messages": self.messages,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "status": self.status,
            "written": self.written,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "bad": self.bad,
            "refused": self.refused,
            "online_keys": self.online_keys,
            "snapshot_id": self.snapshot_id,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


@dataclass
class IngestResult:
    """A finished run: totals, why it stopped, and each batch."""

    view: str
    source: str
    stopped: Stopped = "idle"
    resumed_after: str | None = None
    batches: list[BatchOutcome] = field(default_factory=list)
    abandoned: int = 0
    """Messages fetched but neither written nor acknowledged when a stop was requested."""
    seconds: float = 0.0

    def total(self, attr: str) -> int:
        return sum(int(getattr(b, attr)) for b in self.batches)

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "source": self.source,
            "stopped": self.stopped,
            "resumed_after": self.resumed_after,
            "batches": len(self.batches),
            "messages": self.total("messages"),
            "written": self.total("written"),
            "duplicates": self.total("duplicates"),
            "skipped": self.total("skipped"),
            "bad": self.total("bad"),
            "refused": self.total("refused"),
            "abandoned": self.abandoned,
            "seconds": round(self.seconds, 3),
            "details": [b.to_dict() for b in self.batches],
        }


class RefusedBatch(AuditFailed):
    """``ingest.on_refused: stop``: a batch was refused; it is kept aside and was not acknowledged."""


class Ingestor:
    """Consumes ``broker`` into ``view_name`` (see the module docstring). ``on_batch`` sees every outcome;
    setting ``stop`` (or calling :meth:`stop`) ends the loop as SIGTERM should."""

    def __init__(
        self,
        project: Project,
        view_name: str,
        broker: Broker,
        settings: IngestSettings,
        *,
        online: OnlineStore | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.project = project
        self.broker = broker
        self.settings = settings
        self.writer = MicroBatchWriter(
            project,
            view_name,
            online=online if settings.online else None,
            operation=OPERATION,
            log_batches=settings.log_batches,
        )
        self.view = self.writer.view
        self.decoder = MessageDecoder(self.view, project.load_table(self.view.name).schema().as_arrow())
        self.on_batch = on_batch
        self.clock = clock
        self._stop = stop if stop is not None else threading.Event()
        self.key = offset_key(broker.source)
        self.resume_offset = last_committed(project, self.view.name, self.key)
        self.resume: Position | None = (
            broker.position(self.resume_offset) if self.resume_offset is not None else None
        )
        broker.start(self.resume_offset)

    def stop(self) -> None:
        """Ask the loop to stop: a batch being collected is abandoned unacknowledged, one being written
        finishes. Safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- collecting ---------------------------------------------------------------------------------------
    def _collect(self) -> tuple[list[Message], bool]:
        """A batch of messages; the flag says the stream was idle (a whole poll brought nothing)."""
        s = self.settings
        batch: list[Message] = []
        deadline = 0.0
        while len(batch) < s.batch_rows and not self._stop.is_set():
            now = time.monotonic()
            wait = s.poll_seconds if not batch else min(s.poll_seconds, max(deadline - now, 0.0))
            got = self.broker.fetch(s.batch_rows - len(batch), wait)
            if got:
                if not batch:
                    deadline = time.monotonic() + s.batch_seconds
                batch.extend(got)
            elif not batch:
                return batch, True
            elif s.until_idle:
                break  # the stream is drained: publish what we have rather than wait for batch_seconds
            if batch and time.monotonic() >= deadline:
                break
        return batch, False

    # --- one batch ------------------------------------------------------------------------------------------
    def _process(self, batch: list[Message]) -> BatchOutcome:
        t0 = time.perf_counter()
        run_id = f"ingest-{lineage.new_run_id()}"
        out = BatchOutcome(run_id, len(batch), batch[0].offset, batch[-1].offset)
        todo = batch if self.resume is None else [m for m in batch if m.position > self.resume]
        out.skipped = len(batch) - len(todo)
        if todo:
            decoded = self.decoder.decode(todo)
            if decoded.bad:
                # Kept aside before anything commits: a crash after this may keep them twice, never zero times.
                bad = bad_rows(self.broker.source, decoded.bad)
                verdict = f"{len(decoded.bad)} unreadable messages of {self.broker.source}"
                kept = self.writer.reject(bad, run_id, verdict)
                out.bad = kept.rejected
                out.notes.append(
                    f"{out.bad} messages could not be read (first: offset {decoded.bad[0].message.offset}: "
                    f"{decoded.bad[0].reason}); kept in {self.project.namespace}.{REJECTED_TABLE}"
                )
            if decoded.rows.num_rows:
                summary = {
                    self.key: todo[-1].offset,
                    SOURCE: self.broker.source,
                    FIRST_OFFSET: todo[0].offset,
                    MESSAGES: str(len(todo)),
                }
                result = self.writer.write(decoded.rows, run_id=run_id, summary=summary)
                self._absorb(out, result, decoded.rows)
                if result.status == "refused" and self.settings.on_refused == "stop":
                    raise RefusedBatch(
                        f"ingest of {self.view.name} from {self.broker.source} stopped: the audit refused the "
                        f"batch of offsets {todo[0].offset}..{todo[-1].offset} ({result.verdict}); its rows "
                        f"are kept in {self.project.namespace}.{REJECTED_TABLE}, main is unchanged and the "
                        "messages were not acknowledged: fix the data or the checks, then run ingest again",
                        result.report,
                    )
        self.broker.ack(batch)
        out.seconds = time.perf_counter() - t0
        return out

    def _absorb(self, out: BatchOutcome, result: MicroBatchResult, rows: Any) -> None:
        out.status = result.status
        out.written, out.duplicates, out.refused = result.written, result.duplicates, result.rejected
        out.online_keys, out.snapshot_id = result.online_keys, result.snapshot_id
        out.notes.extend(result.notes)
        if result.status == "published":
            newest = pc.max(rows.column(self.view.timestamp_field)).as_py()
            out.lag_seconds = max(self.clock() - newest.timestamp(), 0.0)
            self.resume = self.broker.position(out.last_offset)

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self) -> IngestResult:
        t0 = time.perf_counter()
        result = IngestResult(self.view.name, self.broker.source, resumed_after=self.resume_offset)
        # Every batch allocates some 100,000 short-lived objects (entries, messages, decoded rows), enough to
        # trigger full garbage collections that walk the whole heap of imported code, catalog and engines
        # (~55 ms a 10k batch of the ~200 budgeted). That heap is long-lived: freeze it for the loop.
        gc.collect()
        gc.freeze()
        try:
            while True:
                batch, idle = self._collect()
                if self._stop.is_set():
                    result.stopped, result.abandoned = "stop-requested", len(batch)
                    break
                if idle:
                    self._flush_logs(result)
                    if self.settings.until_idle:
                        result.stopped = "idle"
                        break
                    continue
                outcome = self._process(batch)
                result.batches.append(outcome)
                if self.on_batch is not None:
                    self.on_batch(outcome)
                if self._stop.is_set():
                    result.stopped = "stop-requested"
                    break
                if self.settings.max_batches is not None and len(result.batches) >= self.settings.max_batches:
                    result.stopped = "max-batches"
                    break
        finally:
            gc.unfreeze()
            self.writer.close()
        result.seconds = time.perf_counter() - t0
        return result

    def _flush_logs(self, result: IngestResult) -> None:
        """The stream is idle: append the spooled logs now rather than after ``log_batches`` batches."""
        if self.writer.logs.pending and result.batches:
            result.batches[-1].notes.extend(self.writer.flush_logs())


__all__ = [
    "OFFSET_PREFIX",
    "BatchOutcome",
    "IngestResult",
    "IngestSettings",
    "Ingestor",
    "RefusedBatch",
    "offset_key",
]
