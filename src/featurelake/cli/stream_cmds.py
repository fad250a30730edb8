"""``featurelake ingest``: consume a stream into a view in audited micro-batches."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx

if TYPE_CHECKING:
    from featurelake.streaming.ingest import BatchOutcome


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and Ctrl-C set ``stop`` (the consumer finishes or abandons its batch); a second one aborts."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        render.err.print(f"[yellow]{signal.Signals(signum).name}: stopping after the batch in hand[/]")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _line(b: BatchOutcome) -> str:
    parts = [f"{b.messages} messages {b.first_offset}..{b.last_offset}: {b.status}"]
    for label, n in (
        ("written", b.written),
        ("duplicates", b.duplicates),
        ("skipped", b.skipped),
        ("bad", b.bad),
        ("refused", b.refused),
    ):
        if n:
            parts.append(f"{label} {n}")
    if b.lag_seconds is not None:
        parts.append(f"lag {b.lag_seconds:.2f}s")
    parts.append(f"{b.seconds:.2f}s")
    return ", ".join(parts)


@click.command()
@click.argument("view")
@click.option(
    "--from",
    "url",
    required=True,
    metavar="URL",
    help="redis://HOST:PORT[/DB]/STREAM or nats://HOST:PORT/SUBJECT (docs/streaming.md).",
)
@click.option("--batch-rows", type=click.IntRange(min=1), default=None, help="Messages per micro-batch.")
@click.option(
    "--batch-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Publish a batch this long after its first message even if it is not full.",
)
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Stop after N micro-batches.")
@click.option(
    "--until-idle", is_flag=True, help="Stop when a poll brings no message (after the batch in hand)."
)
@click.option(
    "--online/--no-online", default=None, help="Also write each published batch to the online store."
)
@click.option(
    "--on-refused",
    type=click.Choice(["continue", "stop"]),
    default=None,
    help="After a batch the audit refused: keep going (default) or exit 1 without acknowledging it.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def ingest(
    c: Ctx,
    view: str,
    url: str,
    batch_rows: int | None,
    batch_seconds: float | None,
    max_batches: int | None,
    until_idle: bool,
    online: bool | None,
    on_refused: str | None,
    as_json: bool,
) -> None:
    """Consume a stream (Redis Streams, NATS JetStream) into VIEW in audited micro-batches, at least once.

    Offsets are acknowledged only after a batch is published (or kept aside); a restart resumes after the
    newest offset on main. SIGTERM stops after the batch being written (one being collected is left
    unacknowledged). Exit 0 when stopped, 1 on a broker/catalog failure or a refused batch with
    --on-refused stop, 2 on usage errors.
    """
    from featurelake.jobs.ingest import run_ingest
    from featurelake.streaming.ingest import IngestSettings

    project = c.fl.project
    settings = IngestSettings.from_config(
        project.config.settings.ingest,
        batch_rows=batch_rows,
        batch_seconds=batch_seconds,
        max_batches=max_batches,
        until_idle=until_idle or None,
        online=online,
        on_refused=on_refused,
    )
    stop = threading.Event()

    def show(b: BatchOutcome) -> None:
        if not as_json:
            render.err.print(f"- {escape(_line(b))}")
            for note in b.notes:
                render.err.print(f"[dim]  note: {escape(note)}[/]")

    store = c.fl.online.store if settings.online else None
    with _stop_on_signals(stop):
        result = run_ingest(project, view, url, settings=settings, store=store, on_batch=show, stop=stop)
    if as_json:
        render.print_json(result.to_dict())
        return
    totals = result.to_dict()
    render.out.print(
        f"{result.view} <- {result.source}: {totals['batches']} batches, {totals['messages']} messages "
        f"(written {totals['written']}, duplicates {totals['duplicates']}, skipped {totals['skipped']}, "
        f"bad {totals['bad']}, refused {totals['refused']}); stopped: {result.stopped}"
        + (f", {result.abandoned} fetched messages left unacknowledged" if result.abandoned else "")
    )
