"""``featurelake ui``: the web UI on its own port (docs/ui.md)."""

from __future__ import annotations

import click

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx
from featurelake.errors import UsageError


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback unless you mean to expose it).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8667, show_default=True, help="Port (0: any free port)."
)
@click.option(
    "--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning"])
)
@pass_ctx
def ui(c: Ctx, host: str, port: int, log_level: str) -> None:
    """Serve the web UI: views, runs, audits, models, online store and alerts.

    The pages are read-only; publishing or discarding a kept branch, promoting a model version and syncing a
    view need server.token (or, without one, a browser on this machine). The same pages are under /ui of
    `featurelake serve`.
    """
    try:
        import uvicorn

        from featurelake.ui.app import create_app
    except ImportError as exc:
        raise UsageError(f"featurelake ui needs {exc.name}: pip install 'featurelake[server]'") from exc
    app = create_app(c.fl)
    if host not in ("127.0.0.1", "::1", "localhost") and not c.fl.project.config.settings.server.token:
        render.err.print(
            f"[yellow]warning:[/] the UI on {host} has no server.token: anyone who reaches it can read it "
            "(actions stay limited to loopback clients)"
        )
    render.err.print(f"featurelake UI on http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, ws="none")
    finally:
        app.state.ui.close()
