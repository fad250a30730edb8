"""``featurelake predict``: batch prediction of a view's snapshot into ``predictions.<model>``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = float(task.fields.get("rate", 0.0))
        return Text(f"{int(task.completed):,} rows  {rate:,.0f} rows/s")


class _Bar:
    """The job's progress on stderr: phases as the description, scored rows and rows/s since scoring began."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=None, rate=0.0) if progress is not None else None
        self.scoring_since: float | None = None
        self.done = 0

    def phase(self, message: str) -> None:
        if message.startswith("scoring"):
            self.scoring_since = time.perf_counter()
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=message)
            if not render.err.is_terminal:
                render.err.print(f"[dim]- {message}[/]")

    def rows(self, done: int) -> None:
        self.done = done
        if self.progress is not None and self.task is not None:
            elapsed = time.perf_counter() - (self.scoring_since or time.perf_counter())
            self.progress.update(self.task, completed=done, rate=done / elapsed if elapsed > 0 else 0.0)

    def finish(self, message: str) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=message, total=max(self.done, 1), completed=self.done)


@contextmanager
def _progress(enabled: bool) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None)
        return
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        _RowsPerSecond(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=render.err, transient=False) as progress:
        try:
            yield _Bar(progress)
        except BaseException:
            progress.live.transient = True  # a failed run leaves its one error line, not a stale bar
            raise


def _summary(d: dict[str, Any]) -> list[str]:
    audit = d["audit"]
    checks = ", ".join(
        f"{r['check']}{'(' + r['column'] + ')' if r.get('column') else ''} {r['status']}"
        for r in audit["results"]
    )
    return [
        f"[green]published[/] {d['table']} run {d['run_id']}: {d['rows']:,} predictions in {d['seconds']:.2f}s "
        f"({d['rows_per_second']:,.0f} rows/s; model calls {d['score_seconds']:.2f}s)",
        f"  model {d['model']} {d['model_version']} ({d['flavor']}); features {d['feature_table']} snapshot "
        f"{d['feature_snapshot_id']} ({'latest row per entity' if d['mode'] == 'latest' else 'every row of the window'})",
        f"  main {d['previous_snapshot_id']} -> {d['snapshot_id']}; predicted_at {d['predicted_at']}"
        + (f"; mean prediction {d['prediction_mean']:.4f}" if d["prediction_mean"] is not None else ""),
        f"  audit {audit['status']}: {checks}",
    ]


@click.command(
    "predict", short_help="Score VIEW with MODEL into predictions.<model> through Write-Audit-Publish."
)
@click.argument("model")
@click.option(
    "--view", default=None, help="Feature view to score (default: the one the model was trained on)."
)
@click.option("--as-of", default=None, help="Read the view's main as of this time (ISO, UTC if no offset).")
@click.option("--snapshot", "snapshot_id", type=int, default=None, help="Read this snapshot id of the view.")
@click.option(
    "--where",
    default=None,
    help="Filter the rows to score: one SQL boolean expression over the view's columns.",
)
@click.option(
    "--output", default=None, help="Predictions table (default predictions.<model>; NAME or NAMESPACE.NAME)."
)
@click.option(
    "--start",
    default=None,
    help="Score every row with event time >= START (with --end) instead of the latest per entity.",
)
@click.option("--end", default=None, help="End of the window (exclusive).")
@click.option(
    "--max-age",
    default=None,
    help="Drop entities whose latest row is older than this (e.g. 2d) before --as-of/now.",
)
@click.option("--run-id", default=None, help="Run id (default: generated); the branch is audit_<run id>.")
@click.option(
    "--nan-policy",
    type=click.Choice(["fill", "fail"]),
    default=None,
    help="Missing inputs: fill with the model's recorded defaults, or fail (default: prediction.nan_policy).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def predict(
    c: Ctx,
    model: str,
    view: str | None,
    as_of: str | None,
    snapshot_id: int | None,
    where: str | None,
    output: str | None,
    start: str | None,
    end: str | None,
    max_age: str | None,
    run_id: str | None,
    nan_policy: str | None,
    as_json: bool,
) -> None:
    """Score VIEW with MODEL (NAME = its Production version, NAME@1.2.0, NAME@staging, NAME@alias) and publish
    the predictions through Write-Audit-Publish: exit 0 published, 1 refused (audit, data), 2 usage error."""
    from featurelake.jobs.batch_predict import run_predict
    from featurelake.prediction.request import PredictRequest

    request = PredictRequest(
        model,
        view,
        as_of=as_of,
        snapshot_id=snapshot_id,
        where=where,
        output=output,
        start=start,
        end=end,
        max_age=max_age,
        run_id=run_id,
        nan_policy=nan_policy,
    )
    with _progress(not as_json) as bar:
        result = run_predict(c.fl.project, c.fl.models, request, progress=bar)
        bar.finish(f"published {result.table}")
    d = result.to_dict()
    if as_json:
        render.print_json({"status": "published", **d})
        return
    for line in _summary(d):
        render.out.print(line)
    for note in result.notes:
        render.out.print(f"[dim]note: {note}[/]")
