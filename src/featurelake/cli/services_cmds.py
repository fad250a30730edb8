"""``featurelake services``: the feature services applied to the catalog, with their versions."""

from __future__ import annotations

import click
from rich.table import Table as RichTable

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx


@click.command("services")
@click.option("--history", is_flag=True, help="Every recorded version (and removal), oldest first.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def services(c: Ctx, history: bool, as_json: bool) -> None:
    """Feature services applied to the catalog: name, version, features and description."""
    listed = c.fl.services(history=history)
    if as_json:
        render.print_json([s.to_dict() for s in listed])
        return
    if not listed:
        render.out.print(
            "no feature service applied: declare FeatureService(name, features=[...]) in features.py and run "
            "`featurelake apply`"
        )
        return
    title = "feature services (every recorded state, oldest first)" if history else "feature services"
    t = RichTable(title=title)
    for col in ("name", "version", "features", "description", "applied (UTC)", "features.py"):
        t.add_column(col, overflow="fold")
    for s in listed:
        t.add_row(
            s.name,
            str(s.version),
            ", ".join(s.features),
            s.description,
            f"{s.applied_at:%Y-%m-%d %H:%M:%S}",
            s.state,
        )
    render.out.print(t)
    applied = {s.name for s in listed}
    pending = sorted(n for n in c.fl.definitions.services if n not in applied)
    if pending and not history:
        render.out.print(
            f"defined in features.py but not applied: {', '.join(pending)} (run `featurelake apply`)"
        )
