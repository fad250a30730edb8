"""``featurelake consistency VIEW``: does the online store serve what Iceberg main says, key by key?"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table as RichTable

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx

if TYPE_CHECKING:
    from featurelake.serving.consistency import ConsistencyReport, KeyDiff

#: Keys listed per verdict in the table (``--json`` lists every one).
SHOWN = 20
MEANING = {
    "consistent": "same event and values as main's latest row",
    "mismatch": "same event, a value differs",
    "missing": "in main, not in the online store",
    "stale": "the online store holds an older event than main's latest",
    "extra": "in the online store, not in main",
    "ahead": "the online store holds a newer event (a push or a stream): fine",
    "expired": "main's latest row is older than the ttl: served as nulls either way",
}


def _value(v: Any) -> str:
    return "" if v is None else str(v)


def _diff_table(report: ConsistencyReport, verdict: str, diffs: list[KeyDiff]) -> RichTable:
    more = f", first {SHOWN}" if len(diffs) > SHOWN else ""
    t = RichTable(title=f"{verdict} keys of {report.view} ({len(diffs)}{more})")
    columns = ["key", "iceberg event_ts", "online event_ts"]
    if verdict == "mismatch":
        columns.append("differences (iceberg -> online)")
    for col in columns:
        t.add_column(col, overflow="fold")
    for d in diffs[:SHOWN]:
        row = [
            d.text,
            d.iceberg_event_ts.isoformat() if d.iceberg_event_ts else "",
            d.online_event_ts.isoformat() if d.online_event_ts else "",
        ]
        if verdict == "mismatch":
            row.append("; ".join(f"{f}: {_value(a)} -> {_value(b)}" for f, (a, b) in d.differences.items()))
        t.add_row(*row)
    return t


@click.command()
@click.argument("view")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Keys to check, drawn at random from main's and the store's keys; 0 = every key.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample.")
@click.option(
    "--now",
    default=None,
    help="Judge the view's ttl as of this time (ISO, UTC if no offset; default: now).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def consistency(c: Ctx, view: str, sample: int, seed: int, now: str | None, as_json: bool) -> None:
    """Compare VIEW's online store with Iceberg main's latest value per key: exit 0 consistent, 1 keys differ, 2 usage error.

    Reports mismatched values, missing keys (in main, not online), stale keys (online holds an older event)
    and extra keys (online only), and records featurelake_online_consistency_mismatch_ratio.
    """
    at = None
    if now is not None:
        from featurelake.lakehouse.window import parse_timestamp

        at = parse_timestamp(now, "--now")
    report = c.fl.consistency(view, sample=sample, seed=seed, now=at)
    if as_json:
        render.print_json(report.to_dict())
    else:
        from featurelake.serving.consistency import INCONSISTENT

        t = RichTable(title=f"consistency of {view}: {report.store} online store at {report.location}")
        for col in ("verdict", "keys", "meaning"):
            t.add_column(col)
        for verdict, n in report.counts.items():
            t.add_row(verdict, str(n), MEANING[verdict])
        render.out.print(t)
        for verdict in (*INCONSISTENT, "ahead"):
            diffs = report.of(verdict)
            if diffs:
                render.out.print(_diff_table(report, verdict, diffs))
        render.out.print(report.summary())
        for note in report.notes:
            render.out.print(f"[dim]note: {note}[/]")
        if not report.ok:
            render.out.print(
                f"[red]{report.inconsistent} inconsistent key(s)[/]: `featurelake sync {view} --full` rewrites "
                "every key from main"
            )
    if not report.ok:
        sys.exit(1)
