"""``featurelake sync``, ``get`` and ``serve``: the online side of a project."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx
from featurelake.errors import UsageError

if TYPE_CHECKING:
    from featurelake.serving.sync import SyncProgress, SyncResult


@contextmanager
def _bar(enabled: bool) -> Iterator[SyncProgress | None]:
    """A rich progress bar per view on stderr: phases as text, then keys written out of the total."""
    if not enabled:
        yield None
        return
    from featurelake.serving.sync import SyncProgress

    class BarProgress(SyncProgress):
        def __init__(self, bar: Progress) -> None:
            self.bar = bar
            self.tasks: dict[str, TaskID] = {}

        def _task(self, view: str) -> TaskID:
            if view not in self.tasks:
                self.tasks[view] = self.bar.add_task(view, total=None, status="")
            return self.tasks[view]

        def phase(self, view: str, text: str) -> None:
            self.bar.update(self._task(view), status=text)

        def writing(self, view: str, total: int) -> None:
            self.bar.update(
                self._task(view), total=max(total, 1), completed=0 if total else 1, status="writing"
            )

        def advance(self, view: str, n: int) -> None:
            self.bar.advance(self._task(view), n)

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=render.err,
    ) as bar:
        yield BarProgress(bar)


def _summary_table(results: list[SyncResult]) -> RichTable:
    t = RichTable(title="online sync")
    for col in ("view", "mode", "snapshots", "rows read", "keys", "changed", "deleted", "seconds"):
        t.add_column(col)
    for r in results:
        t.add_row(
            r.view,
            r.mode,
            f"{r.from_snapshot or '-'} -> {r.to_snapshot or '-'}",
            str(r.rows),
            str(r.keys),
            str(r.changed),
            str(r.deleted),
            f"{r.seconds:.2f}",
        )
    return t


@click.command()
@click.argument("view", required=False)
@click.option(
    "--full", is_flag=True, help="Resync everything from main instead of the changes since last time."
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def sync(c: Ctx, view: str | None, full: bool, as_json: bool) -> None:
    """Sync VIEW (default: every view) from Iceberg main to the online store, incrementally."""
    with _bar(not as_json) as progress:
        results = c.fl.sync(view, full=full, progress=progress)
    if as_json:
        render.print_json([r.to_dict() for r in results])
        return
    render.out.print(_summary_table(results))
    for r in results:
        if r.mode == "full" and r.reason:
            render.out.print(f"[yellow]{r.view}: full resync[/] because {r.reason}")
        render.out.print(r.summary())
        for note in r.notes:
            render.out.print(f"[dim]note: {note}[/]")


@click.command()
@click.argument("view")
@click.argument("keys", nargs=-1, required=True)
@click.option("--features", default=None, help="Comma-separated features (default: all of the view's).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def get(c: Ctx, view: str, keys: tuple[str, ...], features: str | None, as_json: bool) -> None:
    """Look up KEYS of VIEW in the online store.

    A composite key is written with every key column, e.g. user_id=1,merchant_id=7 (double-quote a value
    holding a comma: merchant_id="a,b").
    """
    online = c.fl.online
    fv = c.fl.definitions.view(view)
    typed: list[Any] = list(keys)
    if fv.composite:
        typed = [_composite_key(fv.name, fv.join_keys, online.key_types(fv), k) for k in keys]
    elif online.key_is_int(fv):
        try:
            typed = [int(k) for k in keys]
        except ValueError:
            bad = next(k for k in keys if not k.lstrip("-").isdigit())
            raise UsageError(f"key {bad!r} is not an integer, but {fv.join_key} of view {view} is") from None
    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    notice = online.layout_notice(view)  # asked first: the lookup then leaves it to us to say
    if notice:
        render.err.print(f"[yellow]warning:[/] {notice}")
    rows = online.get(view, typed, names)
    if as_json:
        render.print_json([r.to_dict() for r in rows])
        return
    cols = list(rows[0].values) if rows else []
    t = RichTable(title=f"{view} (online, {online.store.type_name})")
    for col in (*fv.join_keys, "status", "event_ts", *cols):
        t.add_column(col)
    for r in rows:
        t.add_row(
            *([str(r.key[k]) for k in fv.join_keys] if isinstance(r.key, dict) else [str(r.key)]),
            r.status,
            r.event_ts.isoformat() if r.event_ts else "",
            *("" if r.values[n] is None else str(r.values[n]) for n in cols),
        )
    render.out.print(t)


def _composite_key(view: str, columns: list[str], is_int: tuple[bool, ...], text: str) -> dict[str, Any]:
    """``user_id=1,merchant_id=7`` as ``{"user_id": 1, "merchant_id": 7}``, typed per key column."""
    from featurelake.features.keys import parse_key_text

    out: dict[str, Any] = {}
    for column, value, integer in zip(columns, parse_key_text(text, columns, view), is_int, strict=True):
        if integer:
            try:
                out[column] = int(value)
            except ValueError:
                raise UsageError(
                    f"key {text!r}: {column} {value!r} is not an integer, but {column} of view {view} is"
                ) from None
        else:
            out[column] = value
    return out


@click.command()
@click.option("--host", default=None, help="Address to bind (default: server.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: server.port, 8666).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Server processes sharing the port (default: server.workers, else one per core).",
)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"])
)
@pass_ctx
def serve(c: Ctx, host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Serve online features and predictions over HTTP.

    POST /get-online-features, POST /predict/{model}, POST /push, GET /metrics, GET /healthz, and the web
    UI under /ui (behind server.token when it is set).
    """
    from featurelake.monitoring.serving import RegistryFlusher
    from featurelake.serving.server import serve as run
    from featurelake.streaming.push import PushService
    from featurelake.ui import mount

    project = c.fl.project
    fl = c.fl
    # Latency and predictions into the local metrics state too, for `featurelake monitor` without Prometheus.
    run(
        project,
        host=host,
        port=port,
        log_level=log_level,
        background=[lambda: RegistryFlusher(project).start().stop],
        push=lambda store: PushService(project, store),
        workers=workers,
        worker_app=f"{__name__}:worker_app",
        wrap=lambda app: mount(app, fl),
    )


def worker_app() -> Any:
    """The app of one worker process of ``featurelake serve --workers N`` (uvicorn calls it by name).

    The worker opens the project itself, so its online store, registry and DuckDB connections are its own,
    and flushes its own serving metrics into the local metrics state (the state's SQLite write lock adds up
    the workers' counter increments; the last worker to flush sets a gauge).
    """
    import os

    from featurelake.api import open as open_project
    from featurelake.monitoring.serving import RegistryFlusher
    from featurelake.serving.server import WORKER_PROJECT_ENV, create_app
    from featurelake.streaming.push import PushService
    from featurelake.ui import mount

    fl = open_project(os.environ[WORKER_PROJECT_ENV])
    project = fl.project
    app = create_app(
        project,
        # Stopped in reverse: the last flush runs before the project closes.
        background=[lambda: fl.close, lambda: RegistryFlusher(project).start().stop],
        dedicated=True,
        push=lambda store: PushService(project, store),
    )
    return mount(app, fl)  # the web UI under /ui
