"""Job: ``featurelake ingest VIEW --from URL`` (composition only: the loop is ``streaming.ingest``'s).

Opens the broker the URL names and the online store, runs the consumer, and records per micro-batch what
the monitoring side watches: ``featurelake_stream_lag_seconds{view}`` (the newest event's delay until it was
visible online), ``featurelake_stream_messages_total{view,outcome}`` and the rows written; the run as a whole
is a job (success or failure with its reason, duration) like a backfill.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from featurelake.monitoring.jobs import monitored_job
from featurelake.monitoring.recorder import recording
from featurelake.serving import open_store
from featurelake.streaming.brokers import BrokerOptions, open_broker
from featurelake.streaming.ingest import BatchOutcome, Ingestor, IngestResult, IngestSettings

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

#: BatchOutcome attribute -> ``outcome`` label of featurelake_stream_messages_total.
_OUTCOMES = (
    ("written", "written"),
    ("duplicates", "duplicate"),
    ("skipped", "skipped"),
    ("bad", "bad"),
    ("refused", "refused"),
)


def record_batch(project: Project, view: str, outcome: BatchOutcome) -> None:
    """One batch's metrics, flushed to the metrics state (a consumer runs for days: per batch, not per run)."""
    with recording(project, "ingest") as rec:
        for attr, label in _OUTCOMES:
            n = int(getattr(outcome, attr))
            if n:
                rec.inc("featurelake_stream_messages_total", {"view": view, "outcome": label}, n)
        if outcome.lag_seconds is not None:
            rec.set("featurelake_stream_lag_seconds", {"view": view}, outcome.lag_seconds)
        if outcome.written:
            rec.rows_written("ingest", project.table_name(view), outcome.written)


@monitored_job("ingest")
def run_ingest(
    project: Project,
    view_name: str,
    url: str,
    *,
    settings: IngestSettings | None = None,
    store: OnlineStore | None = None,
    on_batch: Callable[[BatchOutcome], None] | None = None,
    stop: threading.Event | None = None,
) -> IngestResult:
    """Consume the stream at ``url`` into ``view_name`` until ``settings`` say stop or ``stop`` is set."""
    view = project.view(view_name)  # an unknown view fails before the broker is touched
    cfg = project.config.settings.ingest
    settings = settings or IngestSettings.from_config(cfg)
    options = BrokerOptions(
        view.name,
        max_in_flight=settings.batch_rows,
        connect_timeout=cfg.connect_timeout_seconds,
        ack_wait=cfg.ack_wait_seconds,
    )
    own_store = store is None and settings.online
    target = open_store(project.config) if own_store else store
    try:
        with open_broker(url, options) as broker:

            def done(outcome: BatchOutcome) -> None:
                record_batch(project, view.name, outcome)
                if on_batch is not None:
                    on_batch(outcome)

            ingestor = Ingestor(project, view.name, broker, settings, online=target, on_batch=done, stop=stop)
            return ingestor.run()
    finally:
        if own_store and target is not None:
            target.close()


__all__ = ["record_batch", "run_ingest"]
